// The map: artists in 2-D from /api/map, drawn as SVG; hover names an artist, a click opens it.
const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"];
const SVG = "http://www.w3.org/2000/svg";
const box = document.getElementById("map");
const svg = document.getElementById("map-svg");
const status = document.getElementById("map-status");

async function draw() {
  if (!box.dataset.space) { status.textContent = "No artist index yet: run agf index build."; return; }
  const query = new URLSearchParams({ space: box.dataset.space, method: box.dataset.method });
  const response = await fetch("/api/map?" + query);
  const data = await response.json();
  if (!response.ok) { status.textContent = data.error; return; }
  const xs = data.points.map((p) => p.x), ys = data.points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 40 + (x - x0) / ((x1 - x0) || 1) * 820, sy = (y) => 560 - (y - y0) / ((y1 - y0) || 1) * 520;
  const genres = [...new Set(data.points.map((p) => p.top_genre))].sort();
  const colour = (g) => PALETTE[genres.indexOf(g) % PALETTE.length];
  const largest = Math.max(...data.points.map((p) => p.tracks));
  for (const p of data.points) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", sx(p.x).toFixed(1));
    dot.setAttribute("cy", sy(p.y).toFixed(1));
    dot.setAttribute("r", (4 + 8 * Math.sqrt(p.tracks / largest)).toFixed(1));
    dot.setAttribute("fill", colour(p.top_genre));
    dot.dataset.artistId = p.artist_id;
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${p.name} (${p.top_genre}, ${p.tracks} tracks)`;
    dot.appendChild(title);
    dot.addEventListener("click", () => { window.location = "/artists/" + p.artist_id; });
    svg.appendChild(dot);
  }
  const legend = document.getElementById("legend");
  for (const g of genres) {  // text nodes, never markup: a genre's name comes from the store
    const item = document.createElement("li"), swatch = document.createElement("span");
    swatch.style.background = colour(g);
    item.append(swatch, document.createTextNode(g));
    legend.appendChild(item);
  }
  status.textContent = `${data.points.length} artists in ${data.space}; ${data.axes.join(" × ")}`;
}
draw();
