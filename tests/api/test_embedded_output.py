"""What `realign serve --demo` (and `realign submit --wait`) print at the end of a job: the adapter's real folder
on this machine (embedded mode) and how to download it, never the job-relative `train/adapter`."""

from __future__ import annotations

from pathlib import Path

from api.embedded import format_result

JOB_ID = "job_00112233445566778899"


def succeeded_job() -> dict[str, object]:
    return {"id": JOB_ID, "state": "succeeded", "error": None, "category_counts": {"INVERT": 3},
            "metrics": {"train_steps": 4},
            "artifacts": {"adapter": "train/adapter", "adapter_id": "ad_123", "adapter_name": "kind-v2"}}


def test_the_demo_prints_the_adapter_folder_and_the_download_command(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "jobs" / JOB_ID / "train" / "adapter"
    folder.mkdir(parents=True)
    text = format_result(succeeded_job(), base_url="http://127.0.0.1:8000", data_dir=tmp_path / "state")
    assert f"adapter directory: {folder.resolve()}" in text
    assert "peft.PeftModel.from_pretrained" in text and f"--lora-modules NAME={folder.resolve()}" in text
    assert "http://127.0.0.1:8000/v1/adapters/ad_123/download" in text and "-o kind-v2.tar.gz" in text
    assert f"http://127.0.0.1:8000/v1/jobs/{JOB_ID}/artifacts" in text
    assert "adapter: train/adapter" not in text


def test_a_remote_service_gets_no_local_path_but_the_download_command(tmp_path: Path) -> None:
    text = format_result(succeeded_job(), base_url="https://realign.example", data_dir=None)
    assert "adapter directory" not in text and "train/adapter" not in text.split("{")[0]
    assert "https://realign.example/v1/adapters/ad_123/download" in text
    assert "registered adapter: kind-v2 (ad_123)" in text
