// The flags every end-to-end run starts Debian's headless Chromium with: no network of its own (this machine's
// network refuses Google's hosts), no sandbox (root), and a fake microphone playing `wav` (looped).
export const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

export function chromiumArgs(wav) {
  return [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${wav}`, "--autoplay-policy=no-user-gesture-required",
  ];
}
