import { useEffect, useRef } from 'react';
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  Tooltip,
} from 'chart.js';
import { formatPoints } from '../shared.js';
import { formatDay } from '../format';
import type { HistoryPoint } from '../types';

Chart.register(BarController, BarElement, CategoryScale, LinearScale, Tooltip, Legend);

export const KIND_COLORS = {
  waifu: '#c2185b',
  llama: '#1f5fbf',
} as const;

/**
 * Net points per UTC day, one bar per kind, drawn by Chart.js. Beside the canvas, a table of
 * the same series serves screen readers (and tests: `data-testid="history-row"` rows carry the
 * exact micro-points). After each draw the canvas's `data-chart` attribute holds what the
 * chart itself plots.
 */
export function PointsChart({ series, days }: { series: HistoryPoint[]; days: number }) {
  const canvasRef = useRef<HTMLCanvasElement>(null);
  const chartRef = useRef<Chart<'bar'> | null>(null);

  useEffect(() => {
    const canvas = canvasRef.current;
    if (!canvas) return;
    const reduceMotion = window.matchMedia?.('(prefers-reduced-motion: reduce)').matches ?? false;
    const chart = new Chart(canvas, {
      type: 'bar',
      data: { labels: [], datasets: [] },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: reduceMotion ? false : { duration: 250 },
        interaction: { mode: 'index', intersect: false },
        scales: {
          x: { ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 8 }, grid: { display: false } },
          y: {
            beginAtZero: true,
            ticks: { callback: (value) => formatPoints(Number(value)) },
          },
        },
        plugins: {
          legend: { position: 'bottom' },
          tooltip: {
            callbacks: {
              label: (item) => `${item.dataset.label ?? ''}: ${formatPoints(Number(item.raw))}`,
            },
          },
        },
      },
    });
    chartRef.current = chart;
    return () => {
      chart.destroy();
      chartRef.current = null;
    };
  }, []);

  useEffect(() => {
    const chart = chartRef.current;
    const canvas = canvasRef.current;
    if (!chart || !canvas) return;
    chart.data.labels = series.map((p) => formatDay(p.start_ms));
    chart.data.datasets = [
      {
        label: 'Waifu points',
        data: series.map((p) => p.waifu.points),
        backgroundColor: KIND_COLORS.waifu,
      },
      {
        label: 'Llama points',
        data: series.map((p) => p.llama.points),
        backgroundColor: KIND_COLORS.llama,
      },
    ];
    chart.update();
    canvas.dataset.chart = JSON.stringify({
      labels: chart.data.labels,
      datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data })),
    });
  }, [series]);

  const total = (kind: 'waifu' | 'llama') => series.reduce((sum, p) => sum + p[kind].micro, 0);

  return (
    <figure className="chart-figure" data-testid="points-chart">
      <div className="chart-box">
        <canvas
          ref={canvasRef}
          role="img"
          aria-label={`Bar chart of net Waifu and Llama points per day over the last ${days} days: Waifu ${formatPoints(
            total('waifu') / 1e6,
          )}, Llama ${formatPoints(total('llama') / 1e6)} in all. The table below lists every day.`}
          data-testid="points-chart-canvas"
        />
      </div>
      <details className="chart-data">
        <summary>Points per day as a table</summary>
        <div className="table-scroll">
          <table data-testid="history-table">
            <caption className="visually-hidden">Net points per UTC day</caption>
            <thead>
              <tr>
                <th scope="col">Day (UTC)</th>
                <th scope="col" className="num">
                  Waifu
                </th>
                <th scope="col" className="num">
                  Llama
                </th>
              </tr>
            </thead>
            <tbody>
              {series.map((p) => (
                <tr
                  key={p.start_ms}
                  data-testid="history-row"
                  data-start-ms={p.start_ms}
                  data-waifu-micro={p.waifu.micro}
                  data-llama-micro={p.llama.micro}
                >
                  <th scope="row">{formatDay(p.start_ms)}</th>
                  <td className="num">{formatPoints(p.waifu.points)}</td>
                  <td className="num">{formatPoints(p.llama.points)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </details>
    </figure>
  );
}
