/* Loaded before everything else on the page (a plain script runs before the deferred theme scripts). */

/* 1. Font Awesome vs ipywidgets. The theme's Font Awesome 6 swaps <i> icons for <svg>, also inside
   ipywidgets (the Play button), whose views then throw on every value change and stop jslink chains at
   random. Stop FA watching the DOM, and mark every icon inside a widget as already handled so FA's
   page-load pass leaves it alone. */
window.FontAwesomeConfig = Object.assign(window.FontAwesomeConfig || {}, { observeMutations: false });
(function () {
  function markAll(node) {
    if (node.nodeType !== 1) return;
    if (node.tagName === "I" && node.closest && node.closest(".jupyter-widgets")) {
      node.setAttribute("data-fa-i2svg", "");
    }
    if (node.querySelectorAll) {
      node.querySelectorAll(".jupyter-widgets i").forEach(function (i) { i.setAttribute("data-fa-i2svg", ""); });
    }
  }
  new MutationObserver(function (mutations) {
    mutations.forEach(function (m) { m.addedNodes.forEach(markAll); });
  }).observe(document.documentElement, { childList: true, subtree: true });
})();

/* 2. MathJax 3 vs ipywidgets. The widget manager typesets labels with the MathJax 2 call
   MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]), which throws under MathJax 3. When MathJax 3
   installs its global object, give it a Hub.Queue that does the MathJax 3 equivalent. */
(function () {
  var current = window.MathJax;
  function shim(mj) {
    if (mj && typeof mj === "object" && mj.version && !mj.Hub) {
      mj.Hub = {
        Queue: function (cmd) {
          var el = Array.isArray(cmd) ? cmd[2] : null;
          var run = function () { return mj.typesetPromise ? mj.typesetPromise(el ? [el] : undefined) : null; };
          var ready = mj.startup && mj.startup.promise;
          (ready ? ready.then(run) : Promise.resolve(run())).catch(function () {});
        },
      };
    }
    return mj;
  }
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (v) { current = shim(v); },
  });
})();

/* 3. sphinx-book-theme 1.3 leaves <html data-mode> unset, so pydata-sphinx-theme 0.17 logs a console error
   ("Got invalid theme mode") on every page; start from the stored choice, else follow the system. */
if (!document.documentElement.dataset.mode) {
  var storedMode = null;
  try { storedMode = window.localStorage.getItem("mode"); } catch (e) { /* storage may be disabled */ }
  document.documentElement.dataset.mode = storedMode || "auto";
}
