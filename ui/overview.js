// The overview: the logit lens over the text's last tokens (props.value = {model, overview}, the overview
// being what gpt2.lens_grid gives, as JSON text). Rows are layers (the embeddings first), columns the tokens; each cell
// is that layer's top guess for the token after the column's, coloured by its probability, and bold where
// it is the token that came next. One look shows at which depth each word was decided. The picture keeps
// its size and scrolls in its own box; a tap on a column looks inside that token.
function draw() {
  const root = element.querySelector(".overview-view");
  if (!root) return;
  const g = numbers("overview");
  if (!g) {
    root.innerHTML = "";
    return;
  }
  const c = themeColours();
  const [rows, columns] = [g.top.length, g.tokens.length];
  const [cw, ch, left, top] = [58, 20, 34, 24];
  let body = "";
  g.tokens.forEach((token, j) => {
    const x = left + j * cw;
    body += `<g class="col" data-column="${j}">${rect(x, 0, cw, top - 2, 'fill="transparent"')}`;
    body += text(x + cw / 2, top / 2, clipped(visible(token), 8), 'text-anchor="middle" font-weight="bold"');
    body += `<title>${escapeXml(`token ${g.start + j}: ${quoted(token)} (tap to look inside)`)}</title></g>`;
  });
  g.top.forEach((guesses, i) => {
    const y = top + i * ch;
    body += text(left - 4, y + ch / 2, i === 0 ? "emb" : String(i), 'text-anchor="end" opacity="0.7"');
    guesses.forEach((guess, j) => {
      const [x, p] = [left + j * cw, g.prob[i][j]];
      const hit = j + 1 < columns && guess === g.tokens[j + 1] ? 'font-weight="bold"' : 'opacity="0.85"';
      body += `<g class="cell" data-column="${j}">`;
      body += rect(x + 1, y + 1, cw - 2, ch - 2, `fill="${probFill(p, c)}"`);
      body += text(x + cw / 2, y + ch / 2, clipped(visible(guess), 8), `text-anchor="middle" ${hit}`);
      const where = `${i === 0 ? "embeddings" : `layer ${i}`}, after ${quoted(g.tokens[j])}`;
      body += `<title>${escapeXml(`${where}: ${quoted(guess)} ${percent(p)}`)}</title></g>`;
    });
  });
  const [width, height] = [left + columns * cw + 2, top + rows * ch + 2];
  const svg = svgMarkup(width, height, body, c, "each layer's top guess after each token");
  // The layers' labels again, in a column that stays put while the picture scrolls under it (the SVG
  // keeps its own, for the PNG).
  const labels = g.top
    .map((_, i) => `<span style="top:${top + i * ch}px;height:${ch}px">${i === 0 ? "emb" : i}</span>`)
    .join("");
  root.innerHTML =
    `<section class="pic" data-picture="overview"><div class="pic-head"><b>Overview</b><span class="sub">` +
    `each layer's top guess after each of the last ${columns} tokens; tap a column to look inside it</span>` +
    `${exportButtons("overview")}</div><div class="scroll"><div class="lens"><div class="labels" style="` +
    `width:${left}px;height:${height}px;margin-right:-${left}px;background:${c.background}">${labels}</div>` +
    `${svg}</div></div>` +
    `<p class="detail">Rows: layers, the embeddings first. Darker: more probable. Bold: the token that ` +
    "came next.</p></section>";
  const box = root.querySelector(".scroll");
  box.scrollLeft = box.scrollWidth; // the latest tokens first
}

element.addEventListener("click", (event) => {
  const target = event.target.closest("[data-save], [data-column]");
  const overview = numbers("overview");
  if (!target || !overview) return;
  if (target.dataset.save === "png") savePng(element.querySelector(".lens svg"), "gpt2-overview.png");
  else if (target.dataset.save === "json") saveJson(props.value.overview, "gpt2-overview.json");
  else trigger("inspect", { position: overview.start + Number(target.dataset.column) });
});
watch("value", draw);
draw();
