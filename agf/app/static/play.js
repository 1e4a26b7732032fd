// A play button beside each track: plays (or pauses) its audio element, one at a time.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.play");
  if (!button) return;
  const audio = button.nextElementSibling;
  if (!audio || audio.tagName !== "AUDIO") return;
  document.querySelectorAll("audio").forEach((other) => { if (other !== audio) other.pause(); });
  if (audio.paused) { audio.play(); } else { audio.pause(); }
});
document.addEventListener("play", (event) => {
  document.querySelectorAll("button.play").forEach((b) => b.classList.toggle("playing", b.nextElementSibling === event.target));
}, true);
document.addEventListener("pause", (event) => {
  const button = event.target.previousElementSibling;
  if (button && button.classList) button.classList.remove("playing");
}, true);
// A file the browser cannot decode (WMA, WavPack, Musepack): its button says so instead of doing nothing.
document.addEventListener("error", (event) => {
  const button = event.target.previousElementSibling;
  if (event.target.tagName !== "AUDIO" || !button || !button.classList.contains("play")) return;
  button.disabled = true;
  button.classList.add("unplayable");
  button.textContent = "✕";
  button.title = "This browser cannot play this file's format";
  button.setAttribute("aria-label", button.title);
}, true);
