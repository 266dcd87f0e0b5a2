// Audio thread: moves captured samples to the main thread in ~20 ms blocks, where Rust resamples and frames them.
// No allocation per block: a pool of Float32Arrays is transferred to the main thread and sent back after use
// (a new one is made only if the main thread falls behind and the pool runs dry).
class SoundlineCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.blockFrames = options.processorOptions.blockFrames;
    this.pool = Array.from({ length: 8 }, () => new Float32Array(this.blockFrames));
    this.block = null;
    this.fill = 0;
    this.port.onmessage = (e) => this.pool.push(e.data);
  }

  process(inputs) {
    const samples = inputs[0] && inputs[0][0];
    if (!samples) return true;
    for (let i = 0; i < samples.length; ) {
      if (!this.block) {
        this.block = this.pool.pop() || new Float32Array(this.blockFrames);
        this.fill = 0;
      }
      const n = Math.min(samples.length - i, this.block.length - this.fill);
      this.block.set(samples.subarray(i, i + n), this.fill);
      this.fill += n;
      i += n;
      if (this.fill === this.block.length) {
        this.port.postMessage(this.block, [this.block.buffer]);
        this.block = null;
      }
    }
    return true;
  }
}

registerProcessor("soundline-capture", SoundlineCapture);
