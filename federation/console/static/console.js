// Live view of a run in progress: poll its small status endpoint and, when a round has
// landed, swap in the server-rendered live section (the same template as the page itself).
(function () {
  "use strict";
  const live = document.querySelector("[data-live]");
  if (!live) return;
  async function poll() {
    try {
      const state = await (await fetch(live.dataset.live, { cache: "no-store" })).json();
      if (state.version !== live.dataset.version) {
        const fragment = await fetch(live.dataset.fragment, { cache: "no-store" });
        live.innerHTML = await fragment.text();
        live.dataset.version = state.version;
      }
      if (state.finished) return;
    } catch (error) {
      // The console may be restarting, or the run directory mid-write: try again.
    }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
