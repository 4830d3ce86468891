// The dashboard page: reads /api/status every second and redraws. No libraries.
"use strict";
(function () {
  const token = new URLSearchParams(window.location.search).get("token");
  const statusUrl = "api/status" + (token ? "?token=" + encodeURIComponent(token) : "");
  const $ = (id) => document.getElementById(id);

  function text(tag, value, cls) {
    const el = document.createElement(tag);
    el.textContent = value;
    if (cls) el.className = cls;
    return el;
  }
  function row(cells) {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells) tr.appendChild(text("td", value, cls));
    return tr;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function cpu(p) { return p === null || p === undefined ? "–" : p.toFixed(0) + " %"; }

  function drawThroughput(points) {
    const canvas = $("throughput");
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const rates = [];
    for (let i = 1; i < points.length; i++) {
      const dt = points[i][0] - points[i - 1][0];
      if (dt > 0) rates.push([points[i][0], (points[i][1] - points[i - 1][1]) / dt]);
    }
    const top = Math.max(1, ...rates.map((r) => r[1]));
    // The last minute at least, the whole series (five minutes) at most.
    const span = Math.max(60, points.length ? -points[0][0] : 0);
    ctx.fillStyle = "#667"; ctx.font = "11px sans-serif";
    ctx.fillText(top.toFixed(0) + "/s", 4, 12);
    ctx.fillText("now", w - 28, h - 6);
    if (rates.length < 2) return;
    ctx.strokeStyle = "#3867d6"; ctx.lineWidth = 2; ctx.beginPath();
    rates.forEach(([t, r], i) => {
      const x = w - 4 + (t / span) * (w - 8);
      const y = h - 4 - (r / top) * (h - 20);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    return rates[rates.length - 1][1];
  }

  function render(s) {
    $("controller").textContent = s.controller + " on " + s.host + " · " + s.address;
    const finished = s.done + s.failed;
    const submitted = (s.stats && s.stats.submitted) || 0;
    const pct = submitted ? Math.floor((100 * finished) / submitted) : 0;
    $("done").textContent = s.done;
    $("failed").textContent = s.failed;
    $("queued").textContent = s.queued;
    $("in-flight").textContent = s.in_flight;
    $("worker-count").textContent = s.workers.length;
    $("submitted").textContent = submitted;
    $("progress").textContent = pct;
    $("progress").dataset.value = finished;
    $("progress-fill").style.width = pct + "%";
    const rate = drawThroughput(s.throughput);
    $("rate").textContent = rate === undefined ? "–" : rate.toFixed(0);

    const workers = $("workers");
    workers.replaceChildren(...s.workers.map((w) => {
      const tr = row([
        [w.id], [w.host], [String(w.pid), "num"], [w.state, "state-" + w.state],
        [String(w.tasks_done), "num"], [String(w.in_flight), "num"],
        [bytes(w.rss), "num"], [cpu(w.cpu), "num"], [w.last_heartbeat.toFixed(1) + " s ago", "num"],
      ]);
      tr.dataset.worker = w.id;
      return tr;
    }));
    const failures = $("failures");
    if (s.failures.length) {
      // Redrawn every second: a traceback the reader opened stays open.
      const open = new Set([...failures.querySelectorAll("details[open]")].map((d) => d.dataset.task));
      failures.replaceChildren(...s.failures.slice(-10).reverse().map((f) => {
        const d = document.createElement("details");
        d.dataset.task = String(f.task);
        d.open = open.has(d.dataset.task);
        d.appendChild(text("summary", "task #" + f.task + ": " + f.type + ": " + f.message +
          " (worker " + f.worker + (f.host ? ", " + f.host : "") + ", " + f.ago + " s ago)"));
        d.appendChild(text("pre", f.traceback || "(no remote traceback)"));
        return d;
      }));
    }
    $("departed").replaceChildren(...s.departed.map((w) => row([
      [w.id], [w.host], [String(w.pid), "num"], [w.how || w.state], [String(w.tasks_done), "num"],
    ])));
  }

  async function poll() {
    const badge = $("connection");
    try {
      const response = await fetch(statusUrl, { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      badge.textContent = "live"; badge.className = "badge live";
    } catch (err) {
      badge.textContent = "no answer: " + err.message; badge.className = "badge down";
    }
    setTimeout(poll, 1000);
  }
  poll();
})();
