() => {
  // The settings sidebar starts closed, so a phone shows the prompt and Generate first (an open Gradio
  // sidebar covers the whole page below 769px). A wide screen has room for both: open it there.
  if (!window.matchMedia("(min-width: 769px)").matches) return;
  let tries = 0;
  const open = () => {
    const bar = document.getElementById("settings");
    const toggle = bar && bar.querySelector(".toggle-button");
    if (!toggle) {
      if (++tries < 600) requestAnimationFrame(open); // not rendered yet
      return;
    }
    if (!bar.classList.contains("open")) toggle.click(); // Gradio's own toggle, so its state follows
  };
  open();
}
