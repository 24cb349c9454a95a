// Lip-sync measurement for the browser tests: a camera that flashes and beeps together, and a
// detector that timestamps flashes (video) and beeps (audio) of whatever a <video> element plays.
// The detector runs the same way on the sender's own preview and on a viewer, so its own
// latencies cancel out in the difference the test computes.

// Replaces getUserMedia in every page of a context: a 640x360 canvas, dark, white for 100 ms
// every 1.01 s, and a 1 kHz tone gated to the same 100 ms. (Not a whole number of 30 fps frames,
// so each flash starts at another phase of the frame clock and the median averages it out.) The audio clock is the master (the
// tone's edges are scheduled on it; the canvas follows it), so both start together to within a
// frame.
export const FLASH_BEEP_CAMERA = `(() => {
  const PERIOD = 1.01, FLASH = 0.1;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const w = 640, h = 360;
    const canvas = document.createElement('canvas');
    canvas.width = w; canvas.height = h;
    const g = canvas.getContext('2d');
    const ac = new AudioContext();
    await ac.resume();
    const osc = ac.createOscillator();
    osc.frequency.value = 1000;
    const gain = ac.createGain();
    gain.gain.value = 0;
    const dest = ac.createMediaStreamDestination();
    osc.connect(gain).connect(dest);
    osc.start();
    const t0 = ac.currentTime + 0.5;
    for (let i = 0; i < 900; i++) {
      gain.gain.setValueAtTime(0.8, t0 + i * PERIOD);
      gain.gain.setValueAtTime(0, t0 + i * PERIOD + FLASH);
    }
    const draw = () => {
      const t = ac.currentTime - t0;
      g.fillStyle = t >= 0 && (t % PERIOD) < FLASH ? '#ffffff' : '#202020';
      g.fillRect(0, 0, w, h);
    };
    draw();
    setInterval(draw, 4);
    const tracks = canvas.captureStream(30).getVideoTracks();
    if (constraints && constraints.audio) tracks.push(...dest.stream.getAudioTracks());
    return new MediaStream(tracks);
  };
})();`;

// Runs in a page: for `seconds`, the display times (performance.now ms) of each dark->bright
// change of the <video> matching `selector`, and the times of each silence->tone onset of its
// audio. Video: requestVideoFrameCallback's expectedDisplayTime of the first bright frame.
// Audio: an AudioWorklet finds the first loud sample; its context time is mapped to
// performance.now with getOutputTimestamp.
export async function avOnsets({ selector, seconds }) {
  const el = document.querySelector(selector);
  const stream = el && el.srcObject;
  if (!(stream instanceof MediaStream)) throw new Error(`${selector} plays no MediaStream`);
  const audioTracks = stream.getAudioTracks();
  const videoTracks = stream.getVideoTracks();
  if (!videoTracks.length) throw new Error(`${selector} has no video track`);
  const result = { video: [], audio: [], audioTracks: audioTracks.length };

  let ac = null;
  if (audioTracks.length) {
    ac = new AudioContext();
    await ac.resume();
    const code = `class Onset extends AudioWorkletProcessor {
      constructor() { super(); this.loud = false; this.quiet = 0; }
      process(inputs) {
        const ch = inputs[0] && inputs[0][0];
        if (!ch) return true;
        let peak = 0, first = -1;
        for (let k = 0; k < ch.length; k++) {
          const a = Math.abs(ch[k]);
          if (a > peak) peak = a;
          if (first < 0 && a > 0.2) first = k;
        }
        if (!this.loud && first >= 0) {
          this.loud = true; this.quiet = 0;
          this.port.postMessage(currentTime + first / sampleRate);
        } else if (this.loud) {
          this.quiet = peak < 0.05 ? this.quiet + ch.length : 0;
          if (this.quiet > sampleRate * 0.2) this.loud = false;
        }
        return true;
      }
    }
    registerProcessor('onset', Onset);`;
    await ac.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: 'application/javascript' })));
    const node = new AudioWorkletNode(ac, 'onset');
    node.port.onmessage = (e) => {
      const ts = ac.getOutputTimestamp();
      result.audio.push(ts.performanceTime + (e.data - ts.contextTime) * 1000);
    };
    ac.createMediaStreamSource(new MediaStream(audioTracks)).connect(node);
    node.connect(ac.destination);
  }

  const v = document.createElement('video');
  v.muted = true;
  v.playsInline = true;
  v.srcObject = new MediaStream(videoTracks);
  await v.play();
  const c = document.createElement('canvas');
  c.width = 16; c.height = 16;
  const g = c.getContext('2d', { willReadFrequently: true });
  let bright = false;
  let running = true;
  const onFrame = (_now, meta) => {
    if (!running) return;
    g.drawImage(v, 0, 0, 16, 16);
    const d = g.getImageData(0, 0, 16, 16).data;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
    const level = sum / (3 * 256);
    if (!bright && level > 160) { bright = true; result.video.push(meta.expectedDisplayTime); }
    else if (bright && level < 90) bright = false;
    v.requestVideoFrameCallback(onFrame);
  };
  v.requestVideoFrameCallback(onFrame);

  await new Promise((r) => setTimeout(r, seconds * 1000));
  running = false;
  v.srcObject = null;
  if (ac) await ac.close();
  return result;
}
