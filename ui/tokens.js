// A tap on a token looks inside the model there (the Inside view, under the token view); a tap on one of
// a generated token's alternatives continues the text from that alternative instead (a branch); "see
// inside" scrolls to the Inside view. The tokens are the children of .tokens in the text's order, so a
// token's place among them is its position in the text (the prompt's tokens first).
element.addEventListener("click", (event) => {
  const token = event.target.closest(".tokens > .tok");
  if (!token) return;
  const position = Array.prototype.indexOf.call(token.parentElement.children, token);
  const alternative = event.target.closest("button.alt");
  if (alternative) {
    document.activeElement?.blur(); // close the token's panel: the text is about to change
    trigger("branch", { position, token: Number(alternative.dataset.token) });
  } else if (event.target.closest("button.look")) {
    document.getElementById("inside")?.scrollIntoView({ behavior: "smooth", block: "start" });
  } else {
    element.querySelectorAll(".tok.looked").forEach((t) => t.classList.remove("looked"));
    token.classList.add("looked");
    trigger("inspect", { position });
  }
});
