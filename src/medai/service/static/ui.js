// htmx settings and the review queue's keyboard shortcuts (j/k move, a/c/r decide).
"use strict";
if (window.htmx) {
  // a refused selection (422) is shown in place like a dry run; other errors are not swapped
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "422", swap: true, error: false },
    { code: "[45]..", swap: false, error: true },
  ];
}
(function () {
  const queue = document.getElementById("review-queue");
  if (!queue) return;
  const items = () => Array.from(queue.querySelectorAll(".review-item"));
  function current() { return queue.querySelector(".review-item.current") || items()[0]; }
  function select(item) {
    if (!item) return;
    items().forEach((i) => { i.classList.remove("current"); i.removeAttribute("aria-current"); });
    item.classList.add("current");
    item.setAttribute("aria-current", "true");
    item.scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", (event) => {
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || event.ctrlKey || event.metaKey || event.altKey) return;
    const item = current();
    if (!item) return;
    const list = items();
    const at = list.indexOf(item);
    if (event.key === "j") select(list[Math.min(at + 1, list.length - 1)]);
    else if (event.key === "k") select(list[Math.max(at - 1, 0)]);
    else if (event.key === "a") item.querySelector("button.accept").click();
    else if (event.key === "r") item.querySelector("button.reject").click();
    else if (event.key === "c") item.querySelector(".correction input").click();
    else return;
    event.preventDefault();
  });
})();
