// The Inside view of one token (props.value = {model, trace}; the trace is what /inspect returns, as JSON
// text), drawn
// here: each layer's top guess for the next token (the logit lens, a chart: where the model settled and
// where it changed its mind), each head's attention from the token (a layers × heads heatmap of one
// measure), and for the head chosen, the text coloured by how much that head looked at each token. A tap
// on a layer's row shows its top 5 and what its block wrote. The head and layer chosen stay chosen when
// another token is tapped, to follow one head along the text.
const MEASURES = {
  previous: {
    label: "previous token",
    of: (w) => (w.length > 1 ? w[w.length - 2] : null),
    shown: percent,
  },
  first: { label: "first token", of: (w) => w[0], shown: percent },
  entropy: {
    label: "entropy",
    of: (w) => w.reduce((sum, x) => (x > 0 ? sum - x * Math.log(x) : sum), 0),
    scale: (v, w) => v / (Math.log(w.length) || 1), // 1: spread evenly over every token it could see
    shown: (v) => `${v.toFixed(2)} nats`,
  },
};
const chosen = { measure: "previous", head: null, layer: null };

function layerChart(t, c) {
  const rows = t.lens.length;
  const [W, R, top, barX] = [360, 22, 16, 176];
  const final = t.lens[rows - 1][0].token;
  let settled = rows - 1; // the first layer from which the top guess is the model's own, to the end
  while (settled > 0 && t.lens[settled - 1][0].token === final) settled--;
  let body = text(2, 8, "layer", 'opacity="0.7"') + text(42, 8, "top guess", 'opacity="0.7"');
  body += text(W - 4, 8, "probability", 'opacity="0.7" text-anchor="end"');
  t.lens.forEach((guesses, i) => {
    const [best, y] = [guesses[0], top + i * R];
    const changed = i > 0 && best.token !== t.lens[i - 1][0].token;
    const fill = i === chosen.layer ? heatFill(0.25, c) : "transparent";
    body += `<g class="row" data-layer="${i}">${rect(0, y, W, R, `fill="${fill}"`)}`;
    body += text(4, y + R / 2, i === 0 ? "emb" : String(i));
    if (changed) body += `<circle cx="34" cy="${y + R / 2}" r="2.5" fill="${c.accent}"/>`;
    const weight = best.token === final ? 'font-weight="bold"' : "";
    body += text(42, y + R / 2, clipped(quoted(best.text), 18), weight);
    const width = Math.max(1, (W - barX - 44) * best.prob);
    body += rect(barX, y + 4, width.toFixed(1), R - 8, `rx="2" fill="${probFill(best.prob, c)}"`);
    body += text(W - 4, y + R / 2, percent(best.prob), 'text-anchor="end"');
    body += `<title>${escapeXml(i === 0 ? "after the embeddings" : `after block ${i}`)}</title></g>`;
  });
  const line = top + settled * R;
  body += `<line x1="0" x2="${W}" y1="${line}" y2="${line}" stroke="${c.accent}" stroke-dasharray="4 3"/>`;
  const svg = svgMarkup(W, top + rows * R + 2, body, c, "each layer's top guess for the next token");
  return { svg, settled };
}

function layerWords(t, settled) {
  const final = t.lens[t.lens.length - 1][0];
  const changes = t.lens
    .map((g, i) => i)
    .filter((i) => i > 0 && t.lens[i][0].token !== t.lens[i - 1][0].token);
  const where = settled === 0 ? "at the embeddings" : `at layer ${settled}`;
  let words = `Settles on <b>${escapeXml(quoted(final.text))}</b> ${where} (dashed line)`;
  if (changes.length) words += `; a dot marks each change of mind (layer ${changes.join(", ")})`;
  words += ". The last row is the model's own prediction; bold: its guess.";
  const layer = chosen.layer;
  if (layer === null || layer >= t.lens.length) return `${words} Tap a layer for its top 5.`;
  const top5 = t.lens[layer].map((g) => `${escapeXml(quoted(g.text))} ${percent(g.prob)}`).join(" · ");
  const name = layer === 0 ? "After the embeddings" : `After layer ${layer}`;
  let detail = `${name}: ${top5}.`;
  if (layer > 0) {
    const w = t.writes[layer - 1];
    detail +=
      ` Its attention wrote ${w.attn.toFixed(2)} and its MLP ${w.mlp.toFixed(2)} into this token's` +
      " stream (L2 norms).";
  }
  return `${words}<br>${detail}`;
}

function heatmap(t, c) {
  const measure = MEASURES[chosen.measure];
  const layers = t.attention.length;
  const heads = t.attention[0].length;
  const [cell, left, top] = [24, 30, 16];
  const [W, H] = [left + heads * cell + 2, top + layers * cell + 2];
  let body = "";
  for (let h = 0; h < heads; h++) {
    body += text(left + h * cell + cell / 2, 8, String(h + 1), 'text-anchor="middle" opacity="0.7"');
  }
  t.attention.forEach((row, l) => {
    const y = top + l * cell;
    body += text(left - 4, y + cell / 2, String(l + 1), 'text-anchor="end" opacity="0.7"');
    row.forEach((w, h) => {
      const v = measure.of(w);
      const x = left + h * cell;
      const fill = v === null ? "transparent" : heatFill(measure.scale ? measure.scale(v, w) : v, c);
      const label = `layer ${l + 1}, head ${h + 1}: ${measure.label} ${v === null ? "—" : measure.shown(v)}`;
      const look = `rx="2" fill="${fill}" stroke="${c.border}" stroke-width="0.5"`;
      body += `<g class="cell" data-layer="${l}" data-head="${h}">`;
      body += rect(x + 1, y + 1, cell - 2, cell - 2, look);
      body += `<title>${escapeXml(label)}</title></g>`;
    });
  });
  const head = chosen.head;
  if (head && head[0] < layers && head[1] < heads) {
    const look = `fill="none" stroke="${c.text}" stroke-width="2" pointer-events="none"`;
    body += rect(left + head[1] * cell, top + head[0] * cell, cell, cell, look);
  }
  return svgMarkup(W, H, body, c, `attention: ${measure.label}, layers × heads`);
}

function headText(t, c) {
  const head = chosen.head;
  if (!head || head[0] >= t.attention.length || head[1] >= t.attention[0].length) {
    return "<p class='hint'>Rows are layers, columns heads. Tap a cell to see where that head looked.</p>";
  }
  const w = t.attention[head[0]][head[1]];
  const most = Math.max(...w);
  const spans = w.map((x, j) => {
    const self = j === w.length - 1 ? " self" : "";
    const token = escapeXml(visible(t.tokens[t.offset + j]));
    const shade = heatFill(x / most, c);
    return `<span class="att${self}" style="background:${shade}" title="${percent(x)}">${token}</span>`;
  });
  return (
    `<p class="detail">Where layer ${head[0] + 1}, head ${head[1] + 1} looked from this token (the darkest ` +
    `token got ${percent(most)} of its attention; each token's tooltip says its share):</p>` +
    `<div class="head-text">${spans.join("")}</div>`
  );
}

const section = (picture, title, note, body) =>
  `<section class="pic" data-picture="${picture}"><div class="pic-head"><b>${title}</b>` +
  `<span class="sub">${note}</span>${exportButtons(picture)}</div>${body}</section>`;

function draw() {
  const root = element.querySelector(".inside-view");
  const value = props.value;
  if (!root) return;
  const t = numbers("trace");
  if (!t) {
    root.innerHTML =
      "<p class='hint'>Tap any token above to look inside the model there: what each layer would have " +
      "said next, and where each attention head looked.</p>";
    return;
  }
  const c = themeColours();
  const next = t.position + 1 < t.tokens.length ? quoted(t.tokens[t.position + 1]) : "(the text ends here)";
  const seen = t.offset > 0 ? ` · the model saw tokens ${t.offset} to ${t.position}` : "";
  const chart = layerChart(t, c);
  const measures = Object.entries(MEASURES)
    .map(([key, m]) => [key, m.label, key === chosen.measure])
    .map(([key, label, on]) => `<button data-measure="${key}" aria-pressed="${on}">${label}</button>`)
    .join("");
  const layers = `${chart.svg}<p class="detail">${layerWords(t, chart.settled)}</p>`;
  const attention = `<div class="measures">${measures}</div>${heatmap(t, c)}${headText(t, c)}`;
  root.innerHTML =
    `<div class="inside-head">Inside token ${t.position}, <b>${escapeXml(quoted(t.tokens[t.position]))}</b>` +
    ` · next in the text: <b>${escapeXml(next)}</b>${seen} · model ${escapeXml(value.model)}</div>` +
    section("layers", "Layer by layer", "each layer's top guess for the next token", layers) +
    section("attention", "Attention", "how much each head looked at:", attention);
}

element.addEventListener("click", (event) => {
  const target = event.target.closest("[data-save], [data-measure], .cell, .row");
  const trace = numbers("trace");
  if (!target || !trace) return;
  const data = target.dataset;
  if (data.save === "png") {
    const svg = element.querySelector(`section[data-picture="${data.picture}"] svg`);
    savePng(svg, `gpt2-token-${trace.position}-${data.picture}.png`);
  } else if (data.save === "json") {
    saveJson(props.value.trace, `gpt2-token-${trace.position}.json`);
  } else {
    if (data.measure) chosen.measure = data.measure;
    else if (target.classList.contains("cell")) chosen.head = [Number(data.layer), Number(data.head)];
    else chosen.layer = Number(data.layer);
    draw();
  }
});
watch("value", draw);
draw();
