// Small canvas charts for the dashboard (no library, no CDN): line charts, bar charts, histograms and
// before/after interval charts. Each function draws into a <canvas> and returns nothing; every chart scales to
// the canvas's CSS size and the device pixel ratio, and states "no data" instead of drawing an empty frame.
"use strict";

const Charts = (() => {
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
  const CATEGORY_COLORS = { INVERT: "#2563eb", PUNISH: "#dc2626", RETAIN: "#16a34a", ERROR: "#6b7280" };
  const PAD = { left: 54, right: 12, top: 22, bottom: 30 };

  function setup(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || Number(canvas.getAttribute("width")) || 400;
    const height = canvas.clientHeight || Number(canvas.getAttribute("height")) || 200;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    canvas.dataset.drawn = "1";
    return { ctx, width, height };
  }

  function empty(canvas, message) {
    const { ctx, width, height } = setup(canvas);
    ctx.fillStyle = "#6b7280";
    ctx.textAlign = "center";
    ctx.fillText(message || "no data yet", width / 2, height / 2);
    canvas.dataset.drawn = "empty";
  }

  function niceTicks(low, high, count) {
    if (!(high > low)) { high = low + 1; }
    const span = high - low;
    const step0 = Math.pow(10, Math.floor(Math.log10(span / count)));
    const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= count) || step0 * 10;
    const ticks = [];
    for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  function fmt(value) {
    const a = Math.abs(value);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return value.toExponential(1);
    return String(Number(value.toPrecision(3)));
  }

  function frame(ctx, box, xr, yr, opts) {
    const sx = (x) => box.x + ((x - xr[0]) / (xr[1] - xr[0] || 1)) * box.w;
    const sy = (y) => box.y + box.h - ((y - yr[0]) / (yr[1] - yr[0] || 1)) * box.h;
    ctx.strokeStyle = "#e5e7eb";
    ctx.fillStyle = "#374151";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    for (const t of niceTicks(yr[0], yr[1], 4)) {
      ctx.beginPath(); ctx.moveTo(box.x, sy(t)); ctx.lineTo(box.x + box.w, sy(t)); ctx.stroke();
      ctx.fillText(fmt(t), box.x - 4, sy(t) + 3);
    }
    if (opts.xTicks !== false) {
      ctx.textAlign = "center";
      for (const t of niceTicks(xr[0], xr[1], 5)) ctx.fillText(fmt(t), sx(t), box.y + box.h + 14);
    }
    ctx.strokeStyle = "#9ca3af";
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    if (opts.title) {
      ctx.textAlign = "left"; ctx.fillStyle = "#111827"; ctx.font = "bold 12px system-ui, sans-serif";
      ctx.fillText(opts.title, box.x, 14); ctx.font = "11px system-ui, sans-serif";
    }
    if (opts.xLabel) { ctx.textAlign = "right"; ctx.fillStyle = "#6b7280"; ctx.fillText(opts.xLabel, box.x + box.w, box.y + box.h + 26); }
    return { sx, sy };
  }

  function legend(ctx, names, colors, right) {
    ctx.textAlign = "right";
    let x = right;
    for (let i = names.length - 1; i >= 0; i--) {
      ctx.fillStyle = "#111827"; ctx.fillText(names[i], x, 14);
      x -= ctx.measureText(names[i]).width + 4;
      ctx.fillStyle = colors[i]; ctx.fillRect(x - 10, 6, 10, 10);
      x -= 18;
    }
  }

  function extent(values) {
    let low = Infinity; let high = -Infinity;
    for (const v of values) { if (Number.isFinite(v)) { low = Math.min(low, v); high = Math.max(high, v); } }
    if (low === Infinity) return null;
    if (low === high) { low -= Math.abs(low) * 0.1 || 1; high += Math.abs(high) * 0.1 || 1; }
    const margin = (high - low) * 0.05;
    return [low - margin, high + margin];
  }

  // series: [{name, points: [[x, y], ...]}]
  function line(canvas, series, opts = {}) {
    const usable = series.filter((s) => s.points.some((p) => Number.isFinite(p[1])));
    if (!usable.length) { empty(canvas, opts.empty); return; }
    const { ctx, width, height } = setup(canvas);
    const xs = usable.flatMap((s) => s.points.map((p) => p[0]));
    const ys = usable.flatMap((s) => s.points.map((p) => p[1]));
    const xr = extent(xs); const yr = extent(ys);
    const box = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    const { sx, sy } = frame(ctx, box, xr, yr, opts);
    const colors = usable.map((s, i) => s.color || PALETTE[i % PALETTE.length]);
    usable.forEach((s, i) => {
      ctx.strokeStyle = colors[i]; ctx.lineWidth = 1.6; ctx.beginPath();
      let started = false;
      for (const [x, y] of s.points) {
        if (!Number.isFinite(y)) { started = false; continue; }
        if (started) ctx.lineTo(sx(x), sy(y)); else { ctx.moveTo(sx(x), sy(y)); started = true; }
      }
      ctx.stroke();
      if (s.points.length === 1) { ctx.fillStyle = colors[i]; ctx.fillRect(sx(s.points[0][0]) - 2, sy(s.points[0][1]) - 2, 4, 4); }
    });
    legend(ctx, usable.map((s) => s.name), colors, width - PAD.right);
  }

  // bars: [{label, value, color?}]
  function bars(canvas, items, opts = {}) {
    if (!items.length || items.every((b) => !b.value)) { empty(canvas, opts.empty); return; }
    const { ctx, width, height } = setup(canvas);
    const box = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    const top = Math.max(...items.map((b) => b.value));
    const { sy } = frame(ctx, box, [0, 1], [0, top * 1.1], { ...opts, xTicks: false });
    const slot = box.w / items.length;
    items.forEach((b, i) => {
      const x = box.x + slot * i + slot * 0.15;
      ctx.fillStyle = b.color || CATEGORY_COLORS[b.label] || PALETTE[i % PALETTE.length];
      ctx.fillRect(x, sy(b.value), slot * 0.7, box.y + box.h - sy(b.value));
      ctx.fillStyle = "#111827"; ctx.textAlign = "center";
      ctx.fillText(String(b.value), x + slot * 0.35, sy(b.value) - 4);
      ctx.fillText(b.label, x + slot * 0.35, box.y + box.h + 14);
    });
  }

  // A histogram of `values` in `bins` equal bins. With `opts.zeroColor`, values that are exactly zero (e.g. impact
  // weights clamped to zero) are stacked at the bottom of their bin in that colour, so their share stays visible.
  function histogram(canvas, values, opts = {}) {
    const finite = values.filter(Number.isFinite);
    if (!finite.length) { empty(canvas, opts.empty); return; }
    const { ctx, width, height } = setup(canvas);
    const bins = opts.bins || 20;
    let low = Math.min(...finite); let high = Math.max(...finite);
    if (low === high) { low -= 0.5; high += 0.5; }
    const step = (high - low) / bins;
    const counts = new Array(bins).fill(0);
    const zeros = new Array(bins).fill(0);
    for (const v of finite) {
      const bin = Math.min(bins - 1, Math.floor((v - low) / step));
      counts[bin] += 1;
      if (v === 0 && opts.zeroColor) zeros[bin] += 1;
    }
    const box = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    const { sx, sy } = frame(ctx, box, [low, high], [0, Math.max(...counts) * 1.1], opts);
    counts.forEach((c, i) => {
      if (!c) return;
      const a = low + i * step;
      const x = sx(a) + 0.5; const w = Math.max(1, sx(a + step) - sx(a) - 1);
      ctx.fillStyle = opts.color || PALETTE[0];
      ctx.fillRect(x, sy(c), w, sy(zeros[i]) - sy(c));
      if (zeros[i]) { ctx.fillStyle = opts.zeroColor; ctx.fillRect(x, sy(zeros[i]), w, box.y + box.h - sy(zeros[i])); }
    });
    if (opts.zeroColor && zeros.some(Boolean)) legend(ctx, ["clamped to 0", "weighted"], [opts.zeroColor, opts.color || PALETTE[0]], width - PAD.right);
    canvas.dataset.bins = JSON.stringify(counts);
  }

  // rows: [{label, before, beforeCi: [lo, hi], after, afterCi}] on a 0..1 axis (shares): dots with CI whiskers.
  function intervals(canvas, rows, opts = {}) {
    const usable = rows.filter((r) => Number.isFinite(r.before) || Number.isFinite(r.after));
    if (!usable.length) { empty(canvas, opts.empty); return; }
    const { ctx, width, height } = setup(canvas);
    const box = { x: 150, y: PAD.top, w: width - 150 - PAD.right, h: height - PAD.top - PAD.bottom };
    const sx = (v) => box.x + v * box.w;
    ctx.strokeStyle = "#e5e7eb"; ctx.fillStyle = "#374151"; ctx.textAlign = "center";
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      ctx.beginPath(); ctx.moveTo(sx(t), box.y); ctx.lineTo(sx(t), box.y + box.h); ctx.stroke();
      ctx.fillText(`${t * 100}%`, sx(t), box.y + box.h + 14);
    }
    const slot = box.h / usable.length;
    const colors = ["#9ca3af", "#2563eb"];
    usable.forEach((r, i) => {
      const y = box.y + slot * i + slot / 2;
      ctx.fillStyle = "#111827"; ctx.textAlign = "right"; ctx.fillText(r.label, box.x - 8, y + 3);
      [[r.before, r.beforeCi, -4], [r.after, r.afterCi, 4]].forEach(([v, ci, dy], k) => {
        if (!Number.isFinite(v)) return;
        ctx.strokeStyle = colors[k]; ctx.fillStyle = colors[k]; ctx.lineWidth = 2;
        if (ci && Number.isFinite(ci[0]) && Number.isFinite(ci[1])) {
          ctx.beginPath(); ctx.moveTo(sx(ci[0]), y + dy); ctx.lineTo(sx(ci[1]), y + dy); ctx.stroke();
        }
        ctx.beginPath(); ctx.arc(sx(v), y + dy, 3.5, 0, 2 * Math.PI); ctx.fill();
      });
    });
    if (opts.title) {
      ctx.textAlign = "left"; ctx.fillStyle = "#111827"; ctx.font = "bold 12px system-ui, sans-serif";
      ctx.fillText(opts.title, 8, 14); ctx.font = "11px system-ui, sans-serif";
    }
    legend(ctx, ["before", "after"], colors, width - PAD.right);
  }

  // Horizontal stage timeline as SVG: [{stage, start: Date, end: Date|null, state}] -> bars with durations.
  function timeline(svg, stages, now) {
    const NS = "http://www.w3.org/2000/svg";
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const width = svg.clientWidth || 600;
    const rowH = 22;
    svg.setAttribute("height", String(Math.max(1, stages.length) * rowH + 24));
    if (!stages.length) {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", "8"); t.setAttribute("y", "16"); t.textContent = "no stage started yet";
      svg.appendChild(t); return;
    }
    const t0 = Math.min(...stages.map((s) => s.start.getTime()));
    const t1 = Math.max(...stages.map((s) => (s.end || now).getTime()), t0 + 1000);
    const left = 90; const right = 70;
    const sx = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
    stages.forEach((s, i) => {
      const y = i * rowH + 4;
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", "4"); label.setAttribute("y", String(y + 14)); label.textContent = s.stage;
      const bar = document.createElementNS(NS, "rect");
      const x0 = sx(s.start.getTime()); const x1 = sx((s.end || now).getTime());
      bar.setAttribute("x", String(x0)); bar.setAttribute("y", String(y + 3));
      bar.setAttribute("width", String(Math.max(2, x1 - x0))); bar.setAttribute("height", "14");
      bar.setAttribute("fill", s.end ? "#2563eb" : "#f59e0b"); bar.setAttribute("rx", "2");
      const seconds = ((s.end || now).getTime() - s.start.getTime()) / 1000;
      const duration = document.createElementNS(NS, "text");
      duration.setAttribute("x", String(Math.min(x1 + 4, width - right + 4))); duration.setAttribute("y", String(y + 14));
      duration.textContent = `${seconds.toFixed(1)} s${s.end ? "" : " …"}`;
      const tip = document.createElementNS(NS, "title"); tip.textContent = `${s.stage}: ${seconds.toFixed(1)} s`;
      bar.appendChild(tip);
      svg.append(label, bar, duration);
    });
    const axis = document.createElementNS(NS, "text");
    axis.setAttribute("x", String(left)); axis.setAttribute("y", String(stages.length * rowH + 18));
    axis.setAttribute("class", "muted");
    axis.textContent = `total ${((t1 - t0) / 1000).toFixed(1)} s`;
    svg.appendChild(axis);
  }

  // How many pixels differ from the background: the browser test's "the chart drew something".
  function inkPixels(canvas) {
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250) count += 1;
    return count;
  }

  return { line, bars, histogram, intervals, timeline, inkPixels, CATEGORY_COLORS, PALETTE };
})();
