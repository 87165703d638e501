"""The OpenAI-compatible gateway: forwards to a vLLM-protocol serving backend; never imports torch."""

from api.gateway.backend import AdapterLoadError, GatewayError, ServingBackend
from api.gateway.deploy_gate import DeployGateResult, GateCheck, run_deploy_gate
from api.gateway.router import BASE_MODEL, make_gateway_router

__all__ = [
    "BASE_MODEL", "AdapterLoadError", "DeployGateResult", "GateCheck", "GatewayError",
    "ServingBackend", "make_gateway_router", "run_deploy_gate",
]
