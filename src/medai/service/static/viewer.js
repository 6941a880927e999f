// The result viewer: the input (first channel) in grey, the label map as a label
// colormap whose entries the region toggles switch on and off, extra maps (uncertainty,
// heatmap) as warm overlays. window.medaiViewer exposes the state for tests.
"use strict";
(function () {
  const PALETTE = [[0, 0, 0], [255, 220, 0], [0, 160, 255], [255, 40, 40], [0, 200, 90], [200, 90, 255]];
  const canvas = document.getElementById("viewer");
  if (!canvas || !window.niivue) return;
  const data = canvas.dataset;
  const status = document.getElementById("viewer-status");
  const values = (data.labelValues || "").split(",").filter(Boolean).map(Number);
  const state = { ready: false, error: null, labels: null, maps: {} };
  window.medaiViewer = state;

  function labelColormap() {
    const top = Math.max(1, ...values);
    const overlay = document.getElementById("overlay-toggle");
    const cmap = { R: [], G: [], B: [], A: [], I: [], labels: [] };
    for (let v = 0; v <= top; v++) {
      const box = document.querySelector(`.region-toggle[data-label="${v}"]`);
      const shown = v > 0 && (!overlay || overlay.checked) && (!box || box.checked);
      const rgb = PALETTE[v % PALETTE.length];
      cmap.R.push(rgb[0]); cmap.G.push(rgb[1]); cmap.B.push(rgb[2]);
      cmap.A.push(shown ? 255 : 0); cmap.I.push(v); cmap.labels.push(String(v));
    }
    return cmap;
  }

  function redraw() {
    if (state.labels) {
      state.labels.setColormapLabel(labelColormap());
    }
    state.nv.updateGLVolume();
  }

  // Mean RGBA of a (2r+1)² patch of the canvas around the focus, read right after drawing.
  state.focusPixel = function (r = 1) {
    const nv = state.nv;
    nv.drawScene();
    const gl = nv.gl;
    const pos = nv.frac2canvasPos(nv.scene.crosshairPos);
    const x = Math.round(pos[0]);
    const y = canvas.height - 1 - Math.round(pos[1]);
    const size = 2 * r + 1;
    const buffer = new Uint8Array(size * size * 4);
    gl.readPixels(x - r, y - r, size, size, gl.RGBA, gl.UNSIGNED_BYTE, buffer);
    const mean = [0, 0, 0, 0];
    for (let i = 0; i < buffer.length; i++) mean[i % 4] += buffer[i] / (size * size);
    return { x: x, y: Math.round(pos[1]), rgba: mean };
  };

  async function start() {
    const nv = new niivue.Niivue({
      backColor: [0, 0, 0, 1], show3Dcrosshair: false, crosshairWidth: 0, crosshairColor: [0, 0, 0, 0],
      isColorbar: false, dragAndDropEnabled: false, loglevel: "error",
    });
    state.nv = nv;
    await nv.attachToCanvas(canvas);
    const volumes = [{ url: data.input, name: "input.nii.gz", colormap: "gray" }];
    if (data.labels) volumes.push({ url: data.labels, name: "labels.nii.gz", colormap: "gray" });
    await nv.loadVolumes(volumes);
    if (data.labels) state.labels = nv.volumes[1];
    nv.setSliceType(nv.sliceTypeAxial);
    if (data.focus) {
      const mm = data.focus.split(",").map(Number);
      nv.scene.crosshairPos = nv.mm2frac(mm);
    }
    redraw();
    state.ready = true;
    status.textContent = data.labels ? "Input with the label map overlay." : "Input series.";
  }

  async function toggleMap(box) {
    const url = box.dataset.url;
    let volume = state.maps[url];
    if (!volume && box.checked) {
      await state.nv.addVolumeFromUrl({ url: url, name: url.split("/").pop(), colormap: "warm", opacity: 0.6 });
      volume = state.maps[url] = state.nv.volumes[state.nv.volumes.length - 1];
    }
    if (volume) state.nv.setOpacity(state.nv.getVolumeIndexByID(volume.id), box.checked ? 0.6 : 0);
    state.nv.drawScene();
  }

  document.addEventListener("change", (event) => {
    const box = event.target;
    if (!state.ready) return;
    if (box.id === "overlay-toggle" || box.classList.contains("region-toggle")) redraw();
    if (box.classList.contains("map-toggle")) toggleMap(box);
  });
  start().catch((error) => {
    state.error = String(error);
    status.textContent = "The viewer could not load the images: " + error;
  });
})();
