// The browser side of `workbench serve`: microphone -> WebRTC -> bridge; events and the agent's voice back.
"use strict";

const q = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const num = (name) => (q.has(name) && q.get(name) !== "" ? Number(q.get(name)) : null);

const wb = (window.workbench = {
  pc: null, channel: null, sender: null, mic: null, muted: false, micOpenAt: null, timers: [], events: [],
  state: "idle", ended: false,
});

$("dtx").checked = q.get("dtx") === "1";
if (q.get("mute_mode")) $("mute_mode").value = q.get("mute_mode");

function log(text) {
  const el = $("log");
  const t = wb.micOpenAt === null ? "" : ((performance.now() - wb.micOpenAt) / 1000).toFixed(2) + "s ";
  el.textContent += t + text + "\n";
  if (el.textContent.length > 40000) el.textContent = el.textContent.slice(-30000);
  el.scrollTop = el.scrollHeight;
}

function setState(state, label) {
  wb.state = state;
  $("state").className = state;
  $("state").textContent = label;
}

function say(who, text) {
  const box = $("transcript");
  let last = box.lastElementChild;
  if (!last || last.className !== who) {
    last = document.createElement("div");
    last.className = who;
    last.textContent = (who === "user" ? "you: " : "agent: ");
    box.appendChild(last);
  }
  last.textContent += text;
  box.scrollTop = box.scrollHeight;
}

// Opus DTX happens only when usedtx=1 is in the description the browser applies as remote.
function withDtx(sdp) {
  const m = sdp.match(/a=rtpmap:(\d+) opus\/48000[^\r\n]*/i);  // the whole line: opus/48000/2
  if (!m) return sdp;
  const pt = m[1];
  const fmtp = new RegExp(`a=fmtp:${pt} ([^\\r\\n]*)`);
  if (fmtp.test(sdp)) {
    return sdp.replace(fmtp, (line, params) => (/usedtx=/.test(params) ? line.replace(/usedtx=\d/, "usedtx=1")
                                                                         : `${line};usedtx=1`));
  }
  return sdp.replace(m[0], `${m[0]}\r\na=fmtp:${pt} usedtx=1`);
}

function onEvent(e) {
  wb.events.push(e);
  const k = e.kind;
  if (k === "vad") {
    log(`vad ${e.decision} (${e.reason})`);
    if (e.decision === "speech_start") setState("user", "you are speaking");
  } else if (k === "send") {
    if (e.msg === "activity_end") setState("waiting", "waiting for the agent");
    if (e.msg !== "audio") log(`sent ${e.msg}`);
  } else if (k === "server") {
    if (e.msg === "model_audio") {
      if (wb.state !== "agent") setState("agent", "agent speaking");
    } else {
      log(`server ${e.msg}${e.text ? ": " + e.text : ""}${e.detail ? " " + e.detail : ""}`);
    }
    if (e.msg === "input_transcription") say("user", e.text);
    if (e.msg === "output_transcription") say("agent", e.text);
    if (e.msg === "turn_complete") setState("idle", "listening");
  } else if (k === "session") {
    log(`session ${e.what}${e.detail ? " " + e.detail : ""}`);
    if (e.what === "mic_open") openMic();
  } else if (k === "frame_gap") {
    log(`frame gap ${e.gap_s.toFixed(2)} s`);
  } else if (k === "ws" && e.what !== "ping" && e.what !== "pong") {
    log(`ws ${e.what}${e.code ? " " + e.code : ""}${e.reason ? " " + e.reason : ""}`);
  } else if (k === "error" || k === "watchdog") {
    log(`${k}: ${JSON.stringify(e)}`);
  } else if (k === "ended") {
    wb.ended = true;
    setState("ended", "session ended");
    log(`ended: ${e.activities} activities, ${e.answered} turn_completes${e.error ? ", error " + e.error : ""}`);
    $("conn").innerHTML = `recorded as <a href="/recordings/${e.recording}/turns">${e.recording}</a>`;
    finish();
  }
}

// What the browser saw, for /status: packets out, the agent's voice in (its energy proves it was heard).
async function reportStats() {
  if (!wb.pc) return;
  const out = { page: "stats", packets_sent: 0, packets_received: 0, audio_energy_in: 0, samples_in: 0 };
  (await wb.pc.getStats()).forEach((r) => {
    if (r.type === "outbound-rtp" && r.kind === "audio") out.packets_sent += r.packetsSent || 0;
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      out.packets_received += r.packetsReceived || 0;
      out.audio_energy_in += r.totalAudioEnergy || 0;
      out.samples_in += r.totalSamplesReceived || 0;
    }
  });
  wb.stats = out;
  tell(JSON.stringify(out));
}

function tell(msg) {
  if (wb.channel && wb.channel.readyState === "open") wb.channel.send(msg);
}

async function start() {
  $("start").disabled = true;
  $("dtx").disabled = true;
  const pc = (wb.pc = new RTCPeerConnection({ iceServers: [] }));
  wb.channel = pc.createDataChannel("events");
  wb.channel.onmessage = (m) => onEvent(JSON.parse(m.data));
  wb.channel.onopen = () => wb.timers.push(setInterval(() => reportStats().catch(() => {}), 1000));
  // The microphone joins this transceiver when the bridge opens it (after the greeting).
  const transceiver = pc.addTransceiver("audio", { direction: "sendrecv" });
  wb.sender = transceiver.sender;
  pc.ontrack = (ev) => { $("voice").srcObject = new MediaStream([ev.track]); };
  pc.onconnectionstatechange = () => { $("conn").textContent = `WebRTC ${pc.connectionState}`; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // all candidates in the offer: no trickle on the server side
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    setTimeout(resolve, 3000);
  });
  const options = { dtx: $("dtx").checked, mute_mode: $("mute_mode").value, mute_at: num("mute_at"),
                    unmute_at: num("unmute_at"), stop_after: num("stop_after"), user_agent: navigator.userAgent };
  const res = await fetch("/offer", { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", options }) });
  if (!res.ok) { log(`offer refused: ${await res.text()}`); return; }
  const answer = await res.json();
  await pc.setRemoteDescription({ type: "answer", sdp: options.dtx ? withDtx(answer.sdp) : answer.sdp });
  log(`connected as ${answer.name}${options.dtx ? " (usedtx=1)" : ""}; waiting for the greeting`);
  setState("agent", "agent greeting");
  $("hangup").disabled = false;
}

async function openMic() {
  wb.mic = (await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
  })).getAudioTracks()[0];
  await wb.sender.replaceTrack(wb.mic);
  wb.micOpenAt = performance.now();
  log("microphone on");
  setState("idle", "listening");
  $("mute").disabled = false;
  const at = (s, f) => s !== null && wb.timers.push(setTimeout(f, s * 1000));
  at(num("mute_at"), () => setMuted(true));
  at(num("unmute_at"), () => setMuted(false));
  at(num("stop_after"), hangup);
}

async function setMuted(muted) {
  if (!wb.mic || wb.muted === muted) return;
  wb.muted = muted;
  const mode = $("mute_mode").value;
  if (mode === "replace") await wb.sender.replaceTrack(muted ? null : wb.mic);
  else wb.mic.enabled = !muted;
  $("mute").textContent = muted ? "Unmute" : "Mute";
  log(`${muted ? "muted" : "unmuted"} (${mode === "replace" ? "replaceTrack" : "track.enabled"})`);
  tell(JSON.stringify({ page: muted ? "mute" : "unmute", mode }));
}

function hangup() {
  $("hangup").disabled = true;
  $("mute").disabled = true;
  if (wb.mic) wb.mic.stop();
  tell("hangup");  // the bridge ends the session and waits for the last answer; the voice keeps playing
  log("hung up; waiting for the last answer");
}

function finish() {
  reportStats().catch(() => {});
  wb.timers.forEach((id) => { clearTimeout(id); clearInterval(id); });
  if (wb.mic) wb.mic.stop();
  setTimeout(() => wb.pc && wb.pc.close(), 1000);
  $("hangup").disabled = true;
  $("mute").disabled = true;
}

$("start").onclick = () => start().catch((err) => log(`error: ${err}`));
$("hangup").onclick = hangup;
$("mute").onclick = () => setMuted(!wb.muted);
if (q.get("autostart") === "1") start().catch((err) => log(`error: ${err}`));
