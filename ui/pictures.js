// Shared by the Inside view and the overview (each runs this file before its own): tokens as shown,
// colours from the page's theme, SVG markup, and downloads (a PNG drawn from a picture's SVG, or JSON).
// Everything is drawn here in the browser from the JSON the server sends once per tap; nothing is fetched.
const SVG_NS = "http://www.w3.org/2000/svg";
const escapeXml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const visible = (text) => text.replace(/\n/g, "↵").replace(/\t/g, "⇥"); // whitespace a reader can see
const quoted = (text) => `“${visible(text)}”`;
const clipped = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);
const percent = (p) => (p >= 0.1 ? `${(p * 100).toFixed(0)}%` : `${(p * 100).toPrecision(2)}%`);

// The theme's colours as concrete values: an SVG saved as PNG is drawn outside the page, where Gradio's
// CSS variables do not exist. Read when drawing, so light and dark mode both come out right.
function themeColours() {
  const probe = document.createElement("span");
  probe.style.cssText =
    "position:absolute;visibility:hidden;color:var(--body-text-color);" +
    "background-color:var(--background-fill-primary);border-color:var(--border-color-primary);" +
    "outline-color:var(--color-accent)";
  element.appendChild(probe);
  const s = getComputedStyle(probe);
  const c = { text: s.color, background: s.backgroundColor, border: s.borderTopColor };
  c.accent = s.outlineColor;
  probe.remove();
  const [r, g, b, a] = (c.background.match(/[\d.]+/g) || [255, 255, 255]).map(Number);
  c.dark = a !== 0 && 0.299 * r + 0.587 * g + 0.114 * b < 128;
  if (a === 0) c.background = "#ffffff"; // no theme colour: a PNG still needs a background
  return c;
}

// Probability (0..1): blue, stronger the more likely. Attention weight or any other share: orange.
const probFill = (p, c) => `hsla(212, 90%, ${c.dark ? 48 : 58}%, ${(0.08 + 0.8 * p).toFixed(3)})`;
const heatFill = (x, c) => `hsla(25, 95%, ${c.dark ? 50 : 55}%, ${(0.04 + 0.9 * x).toFixed(3)})`;

function svgMarkup(width, height, body, c, label) {
  return (
    `<svg xmlns="${SVG_NS}" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" ` +
    `role="img" aria-label="${escapeXml(label)}" font-size="11" ` +
    `font-family="ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" style="color:${c.text}">` +
    `<rect width="${width}" height="${height}" fill="${c.background}"/>${body}</svg>`
  );
}

const text = (x, y, content, extra = "") =>
  `<text x="${x}" y="${y}" fill="currentColor" dominant-baseline="central" ${extra}>` +
  `${escapeXml(content)}</text>`;
const rect = (x, y, width, height, extra = "") =>
  `<rect x="${x}" y="${y}" width="${width}" height="${height}" ${extra}/>`;

const exportButtons = (picture) =>
  `<span class="exports">` +
  `<button data-save="png" data-picture="${picture}" title="download this picture">PNG</button>` +
  `<button data-save="json" data-picture="${picture}" title="download its numbers">JSON</button></span>`;

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

const saveJson = (text, name) => download(new Blob([text], { type: "application/json" }), name);

// The picture's numbers: the server sends them as JSON text in `props.value[key]` (see app.py,
// wire_inside), parsed here once per value.
let parsedText = null;
let parsedNumbers = null;
function numbers(key) {
  const text = props.value && props.value[key];
  if (!text) return null;
  if (text !== parsedText) [parsedText, parsedNumbers] = [text, JSON.parse(text)];
  return parsedNumbers;
}

// The SVG as an image, drawn on a canvas at twice its size (less for a very wide overview: browsers
// refuse canvases much over 16k pixels a side), saved as PNG.
function savePng(svg, name) {
  const { width, height } = svg.viewBox.baseVal;
  const scale = Math.min(2, 16000 / Math.max(width, height));
  const image = new Image();
  image.onload = () => {
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    const context = canvas.getContext("2d");
    context.scale(scale, scale);
    context.drawImage(image, 0, 0, width, height);
    canvas.toBlob((blob) => download(blob, name), "image/png");
  };
  const markup = new XMLSerializer().serializeToString(svg);
  image.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(markup)}`;
}
