"use strict";
// A small line chart on a canvas: a few series of numbers over time, redrawn on every new
// sample (the last 120 kept, a 30-sample window at first); the canvas's data-points attribute
// counts the samples (tests read it).
class LineChart {
  constructor(canvas, series, format) {
    this.canvas = canvas;
    this.series = series; // [{ name, color }]
    this.format = format || ((v) => String(Math.round(v)));
    this.samples = [];
    this.max = 120;
    canvas.dataset.points = "0";
  }

  push(values) {
    this.samples.push(values);
    if (this.samples.length > this.max) this.samples.shift();
    this.canvas.dataset.points = String(this.samples.length);
    this.canvas.dataset.last = values.join(",");
    this.draw();
  }

  static niceCeil(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth || 400;
    const h = c.clientHeight || 160;
    if (c.width !== w * ratio || c.height !== h * ratio) {
      c.width = w * ratio;
      c.height = h * ratio;
    }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 64, right = 8, top = 22, bottom = 8;
    const pw = w - left - right, ph = h - top - bottom;
    let peak = 0;
    for (const s of this.samples) for (const v of s) peak = Math.max(peak, v);
    const ceil = LineChart.niceCeil(peak);
    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.strokeStyle = "#e3e6ea";
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(left + pw, y);
      g.stroke();
      g.fillStyle = "#6b7280";
      g.textAlign = "right";
      g.fillText(this.format((ceil * i) / 4), left - 6, y);
    }
    const n = Math.max(30, this.samples.length);
    this.series.forEach((s, k) => {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      this.samples.forEach((vals, i) => {
        const x = left + (pw * (n - this.samples.length + i)) / (n - 1);
        const y = top + ph - (ph * vals[k]) / ceil;
        if (i === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
    });
    let x = left;
    g.textAlign = "left";
    const last = this.samples[this.samples.length - 1];
    this.series.forEach((s, k) => {
      const label = `${s.name}${last ? " " + this.format(last[k]) : ""}`;
      g.fillStyle = s.color;
      g.fillRect(x, 6, 10, 10);
      g.fillStyle = "#1f2937";
      g.fillText(label, x + 14, 11);
      x += g.measureText(label).width + 30;
    });
  }
}
