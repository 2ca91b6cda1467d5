// Each sample's "use seed" button asks the server to put that sample's seed into the Seed box.
element.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-seed]");
  if (button) trigger("click", { seed: button.dataset.seed });
});
