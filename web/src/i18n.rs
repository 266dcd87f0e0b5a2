//! Every string the page shows, in one table: Chinese (zh-CN) and English. The technicians who use it, and the
//! system it replaces, speak Chinese; the language comes from `navigator.language` and can be switched on the
//! page (remembered in localStorage).
//!
//! Where it sits: beside the page. Code asks [`t`] (or [`tf`], with `{0}`, `{1}` … filled in) for a [`Key`];
//! static labels in `www/index.html` carry `data-i18n="name"` and are filled by [`apply`].

use std::cell::Cell;

/// A language the page speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 简体中文.
    Zh,
    /// English.
    En,
}

impl Lang {
    /// From a BCP 47 tag (`navigator.language`, or what the page stored): Chinese for `zh*`, else English.
    pub fn from_tag(tag: &str) -> Self {
        if tag.to_ascii_lowercase().starts_with("zh") { Self::Zh } else { Self::En }
    }

    /// The tag for `<html lang>` and storage.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Zh => "zh-CN",
            Self::En => "en",
        }
    }
}

thread_local! {
    static LANG: Cell<Lang> = const { Cell::new(Lang::En) };
}

/// The page's language now.
pub fn lang() -> Lang {
    LANG.with(Cell::get)
}

/// Switches the language (what is shown changes on [`apply`] and as the page next writes each text).
pub fn set(lang: Lang) {
    LANG.with(|l| l.set(lang));
}

macro_rules! strings {
    ($($key:ident $name:literal => $en:literal, $zh:literal;)*) => {
        /// A string of the page.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Key { $(#[doc = $en] $key,)* }

        /// `(key, name in data-i18n, English, Chinese)`, in the order of [`Key`].
        pub const TABLE: &[(Key, &str, &str, &str)] = &[$((Key::$key, $name, $en, $zh),)*];
    };
}

strings! {
    // Static labels (www/index.html, data-i18n).
    Title "title" => "Soundline recorder", "Soundline 声音采集";
    Loading "loading" => "Loading the recorder…", "正在加载采集程序…";
    LegendRecording "legend.recording" => "Recording", "录音";
    CarId "label.car" => "Car (device) ID", "车号（设备 ID）";
    RailType "label.railType" => "Rail type", "轨道类型";
    Unit "label.unit" => "Unit", "单位";
    Position "label.sty" => "Position (sty)", "位置（sty）";
    Notes "label.notes" => "Inspection notes", "检查备注";
    Token "label.token" => "Access token", "访问令牌";
    TokenHint "hint.token" => "only if your relay asks for one", "仅在中继要求时填写";
    Microphone "label.mic" => "Microphone", "麦克风";
    DefaultMicrophone "mic.default" => "Default microphone", "默认麦克风";
    FrameLength "label.frameMs" => "Frame length", "帧长";
    Processing "label.processing" => "Echo cancellation, noise suppression, auto gain", "回声消除、降噪、自动增益";
    Language "label.lang" => "Language", "语言";
    Recorded "label.recorded" => "Recorded", "已录制";
    SavedOnDevice "label.saved" => "saved on device", "已存入本机";
    Acked "label.acked" => "acked", "已确认";
    Pending "label.pending" => "pending", "待确认";
    Clipped "label.clipped" => "clipped", "削波";
    WaitingTitle "title.waiting" => "Waiting to upload", "等待上传";
    LookingForWaiting "waiting.looking" => "Looking for recordings waiting on this device…", "正在查找本机上等待上传的录音…";
    RecordingsTitle "title.recordings" => "Recordings in Kafka", "已进入 Kafka 的录音";
    AllDevicesBox "label.all" => "All devices (supervisor view)", "所有设备（主管视图）";
    Since "label.since" => "Since", "时间范围";
    SinceHour "since.hour" => "the last hour", "最近一小时";
    SinceToday "since.today" => "today", "今天";
    FeedConnecting "feed.connecting" => "Feed: connecting…", "数据流：正在连接…";

    // The recorder.
    StartRecording "record.start" => "Start recording", "开始录音";
    StopRecording "record.stop" => "Stop recording", "停止录音";
    Starting "record.starting" => "Starting…", "正在启动…";
    Finishing "record.finishing" => "Finishing: {0} frames to confirm…", "正在收尾：还有 {0} 帧待确认…";
    Ready "status.ready" => "Ready. Relay: {0}", "就绪。中继：{0}";
    RecordingAt "status.recordingAt" => "Recording at {0} Hz, sent as 16 kHz.", "以 {0} Hz 录音，按 16 kHz 发送。";
    NoOffline "status.noOffline" => "(This page will not open without network here: {0})", "（此浏览器无法离线打开本页：{0}）";
    CouldNotStart "status.couldNotStart" => "The recorder could not start: {0}", "采集程序无法启动：{0}";
    EnterCar "error.enterCar" => "Enter the car (device) ID before recording.", "录音前请输入车号（设备 ID）。";
    NoWebAudio "error.noWebAudio" => "This browser cannot record audio (no Web Audio).", "此浏览器无法录音（不支持 Web Audio）。";
    BadRelay "error.badRelay" => "The relay address is not usable: {0}", "中继地址不可用：{0}";
    UnsupportedRate "error.rate" => "This device records at an unsupported rate: {0}", "此设备的采样率不受支持：{0}";
    MicDenied "error.micDenied" => "Microphone access was denied. Allow it in the browser's site settings and try again.", "麦克风权限被拒绝。请在浏览器的网站设置中允许后重试。";
    MicMissing "error.micMissing" => "No microphone was found (or the chosen one is gone). Plug one in or pick another.", "未找到麦克风（或所选麦克风已断开）。请接入或另选一个。";
    MicBusy "error.micBusy" => "The microphone is in use by another application or could not be opened.", "麦克风被其他应用占用或无法打开。";
    MicOther "error.micOther" => "The microphone could not start: {0}", "麦克风无法启动：{0}";
    Refused "error.refused" => "The relay refused the recording: {0} ({1})", "中继拒绝了该录音：{0}（{1}）";
    LinkIdle "link.idle" => "idle", "空闲";
    LinkLive "link.live" => "live", "在线";
    LinkRetrying "link.retrying" => "relay unreachable, retrying in {0} s (recording goes on; frames wait on this device)", "无法连接中继，{0} 秒后重试（录音继续；音频帧保存在本机）";
    LinkBuffering "link.buffering" => "buffering: {0}", "缓冲中：{0}";
    LinkDone "link.done" => "idle: every frame is in Kafka", "空闲：所有音频帧均已进入 Kafka";
    PendingAudio "pending.audio" => "{0} ({1} s of audio)", "{0}（{1} 秒音频）";
    ScreenOn "awake.on" => "screen kept on", "屏幕保持常亮";
    ScreenMaySleep "awake.maySleep" => "the screen may sleep ({0})", "屏幕可能休眠（{0}）";
    ScreenNoLock "awake.none" => "this browser may let the screen sleep", "此浏览器可能让屏幕休眠";
    Paused "capture.paused" => "The browser paused recording (another app took the microphone, or a call).", "浏览器暂停了录音（其他应用占用了麦克风，或有来电）。";
    PausedFor "capture.pausedFor" => "The browser paused recording for {0} s; the recording marks the hole (its timestamps skip it).", "浏览器暂停录音 {0} 秒；录音已标记该空缺（时间戳跳过这段）。";

    // The outbox and storage.
    NoOutbox "outbox.none" => "This browser cannot keep recordings on the device ({0}): keep the page open until every frame is in Kafka.", "此浏览器无法在本机保存录音（{0}）：请保持页面打开，直到所有音频帧进入 Kafka。";
    NotKept "outbox.notKept" => "This recording cannot be kept on the device ({0}): keep the page open until it is in Kafka.", "此录音无法保存在本机（{0}）：请保持页面打开，直到它进入 Kafka。";
    FullBeforeStart "storage.fullBeforeStart" => "Storage on this device is full: free some space (or upload what waits) before recording.", "本机存储已满：录音前请释放空间（或先上传等待中的录音）。";
    Persisted "storage.persisted" => "Recordings on this device are kept until uploaded.", "本机上的录音会保留到上传完成。";
    NotPersisted "storage.notPersisted" => "Recordings wait on this device until uploaded; the browser may clear them under storage pressure.", "录音保存在本机直到上传；存储空间紧张时浏览器可能清除它们。";
    StorageRoom "storage.room" => "Storage on this device has room again.", "本机存储空间已恢复。";
    StorageWarn "storage.warn" => "Storage on this device is almost full: about {0} more can be recorded before recording stops. Move to where the relay is reachable so waiting audio uploads.", "本机存储即将用满：大约还能录 {0} 就会停止录音。请移动到能连接中继的地方，让等待的音频上传。";
    StorageFull "storage.full" => "Storage on this device is full: recording stopped. Everything recorded is kept here and uploads when the relay is reachable.", "本机存储已满：录音已停止。已录内容都保存在本机，连接中继后会上传。";
    StorageFreed "storage.freed" => "Everything recorded is in Kafka; its storage on this device is free again.", "所有录音已进入 Kafka；本机存储已释放。";
    NotSaved "storage.notSaved" => "{0} s of audio could not be saved on this device ({1}): it is only in memory until uploaded; keep this page open.", "{0} 秒音频无法保存到本机（{1}）：在上传前只在内存中；请保持页面打开。";
    NoDeviceStore "storage.noDeviceStore" => "this browser keeps no recordings on the device", "此浏览器不在本机保存录音";
    ReadBack "outbox.readBack" => "Could not read waiting audio back from this device ({0}); trying again.", "无法从本机读取等待中的音频（{0}）；正在重试。";
    CleanUp "outbox.cleanUp" => "Could not clean up {0} uploaded frames on this device: {1}", "无法清理本机上 {0} 个已上传的音频帧：{1}";
    NotRemoved "outbox.notRemoved" => "The recording is in Kafka, but could not be removed from this device: {0}", "录音已进入 Kafka，但无法从本机删除：{0}";
    Unreadable "outbox.unreadable" => "Could not read the recordings waiting on this device: {0}", "无法读取本机上等待的录音：{0}";
    WaitingRefused "outbox.refused" => "A waiting recording was refused: {0}", "一条等待中的录音被拒绝：{0}";
    LocksRefused "outbox.locks" => "Web Locks refused: {0}", "Web Locks 被拒绝：{0}";
    NothingWaiting "waiting.none" => "Nothing waiting: every recording on this device is in Kafka.", "没有等待的录音：本机所有录音都已进入 Kafka。";
    OneWaiting "waiting.one" => "1 recording waiting to upload, {0} of audio", "1 条录音等待上传，共 {0} 音频";
    ManyWaiting "waiting.many" => "{0} recordings waiting to upload, {1} of audio", "{0} 条录音等待上传，共 {1} 音频";
    RowWaiting "waiting.row.waiting" => "waiting for the relay", "等待中继";
    RowOtherTab "waiting.row.otherTab" => "uploading in another tab", "正在另一个标签页上传";
    RowUploading "waiting.row.uploading" => "uploading: {0} % uploaded", "上传中：已上传 {0}%";
    RowWaitingPercent "waiting.row.waitingPercent" => "waiting for the relay: {0} % uploaded", "等待中继：已上传 {0}%";
    RowInKafka "waiting.row.inKafka" => "completely in Kafka", "已全部进入 Kafka";
    RowStarted "waiting.row" => "{0} · started {1} · {2} left · {3}", "{0} · 开始于 {1} · 剩余 {2} · {3}";
    RowStartedDone "waiting.rowDone" => "{0} · started {1} · {2}", "{0} · 开始于 {1} · {2}";
    Minutes "unit.minSec" => "{0} min {1} s", "{0} 分 {1} 秒";
    MinutesOnly "unit.min" => "{0} min", "{0} 分";
    SecondsOnly "unit.sec" => "{0} s", "{0} 秒";

    // The recordings in Kafka.
    FeedReconnecting "feed.reconnecting" => "Feed: reconnecting…", "数据流：正在重连…";
    FeedNeedsToken "feed.needsToken" => "Feed: the relay needs an access token (enter it above)", "数据流：中继需要访问令牌（请在上方输入）";
    FeedTokenRefused "feed.tokenRefused" => "Feed: the relay refused the access token (enter it above)", "数据流：中继拒绝了访问令牌（请在上方输入）";
    FeedLive "feed.live" => "Feed: live", "数据流：在线";
    FeedSkipped "feed.skipped" => "older records skipped to keep up", "条旧记录已跳过以跟上实时数据";
    Car "word.car" => "car", "车号";
    AllDevices "word.all" => "all devices", "所有设备";
    ThisDevice "word.thisDevice" => "this device", "本设备";
    NoRecordings "recordings.none" => "No recordings in this time yet.", "这段时间还没有录音。";
    StateRecording "recordings.recording" => "recording", "录音中";
    StateComplete "recordings.complete" => "complete", "完整";
    StateMissingOne "recordings.missingOne" => "1 frame missing", "缺少 1 帧";
    StateMissing "recordings.missing" => "{0} frames missing", "缺少 {0} 帧";
    RecordingRow "recordings.row" => "{0} · {1} · {2} · {3} frames · {4} · partition {5}, offsets {6}–{7}", "{0} · {1} · {2} · {3} 帧 · {4} · 分区 {5}，偏移 {6}–{7}";
    Listen "recordings.listen" => "Listen", "收听";
    ListenTo "recordings.listenTo" => "Listen to {0} at {1}", "收听 {0}（{1}）";
    Play "player.play" => "Play", "播放";
    PausePlayback "player.pause" => "Pause", "暂停";
    DownloadWav "player.download" => "Download WAV", "下载 WAV";
    Fetching "player.fetching" => "Fetching the recording from Kafka…", "正在从 Kafka 获取录音…";
    Fetched "player.fetched" => "{0} frames from Kafka ({1} KB read), {2}.", "已从 Kafka 获取 {0} 帧（读取 {1} KB），{2}。";
    FetchFailed "player.fetchFailed" => "Could not fetch the recording: {0}", "无法获取录音：{0}";
    NoneMissing "player.noneMissing" => "nothing missing", "没有缺失";
    MissingSilence "player.missingSilence" => "{0} frames missing ({1} s of silence in their place)", "缺少 {0} 帧（用 {1} 秒静音填补）";
    SpectrogramLabel "spectrogram.label" => "Spectrogram of {0}: 0 to 8 kHz, dB colour scale", "{0} 的频谱图：0 至 8 kHz，分贝色标";
    WaveformLabel "waveform.label" => "Waveform of {0}", "{0} 的波形";
    AxisKhz "axis.khz" => "kHz", "千赫";
    AxisSeconds "axis.s" => "s", "秒";
    LiveSpectrogram "spectrogram.live" => "Live spectrogram of the microphone", "麦克风实时频谱图";
    Result "recordings.result" => "Result: {0}", "分析结果：{0}";
}

/// The string for `key` in the page's language.
pub fn t(key: Key) -> &'static str {
    let (_, _, en, zh) = TABLE[key as usize];
    match lang() {
        Lang::Zh => zh,
        Lang::En => en,
    }
}

/// The string for `key` with `{0}`, `{1}` … replaced by `args`.
pub fn tf(key: Key, args: &[&dyn std::fmt::Display]) -> String {
    let mut out = t(key).to_owned();
    for (i, a) in args.iter().enumerate() {
        out = out.replace(&format!("{{{i}}}"), &a.to_string());
    }
    out
}

/// The string named `name` (a `data-i18n` attribute) in the page's language.
pub fn by_name(name: &str) -> Option<&'static str> {
    TABLE.iter().find(|(_, n, _, _)| *n == name).map(|&(k, _, _, _)| t(k))
}

/// Fills every `data-i18n` element of `doc` (its text; `data-i18n-placeholder`: its placeholder;
/// `data-i18n-label`: its `aria-label`) and `<html lang>`.
pub fn apply(doc: &web_sys::Document) {
    if let Some(html) = doc.document_element() {
        let _ = html.set_attribute("lang", lang().tag());
    }
    if let Some(text) = by_name("title") {
        doc.set_title(text);
    }
    for (attr, target) in
        [("data-i18n", None), ("data-i18n-placeholder", Some("placeholder")), ("data-i18n-label", Some("aria-label"))]
    {
        let Ok(nodes) = doc.query_selector_all(&format!("[{attr}]")) else { continue };
        for i in 0..nodes.length() {
            let Some(el) = nodes.get(i).and_then(|n| wasm_bindgen::JsCast::dyn_into::<web_sys::Element>(n).ok()) else {
                continue;
            };
            let Some(text) = el.get_attribute(attr).as_deref().and_then(by_name) else { continue };
            match target {
                Some(attribute) => drop(el.set_attribute(attribute, text)),
                None => el.set_text_content(Some(text)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_key_order_with_unique_names_and_both_languages() {
        let mut names = std::collections::HashSet::new();
        for (i, (key, name, en, zh)) in TABLE.iter().enumerate() {
            assert_eq!(*key as usize, i, "{name} out of order");
            assert!(names.insert(*name), "{name} twice");
            assert!(!en.is_empty() && !zh.is_empty(), "{name} lacks a language");
            let holes = |s: &str| (0..5).filter(|i| s.contains(&format!("{{{i}}}"))).count();
            assert_eq!(holes(en), holes(zh), "{name}: the languages take different arguments");
        }
    }

    #[test]
    fn chinese_for_zh_tags_english_otherwise_and_arguments_filled_in() {
        assert_eq!(Lang::from_tag("zh-CN"), Lang::Zh);
        assert_eq!(Lang::from_tag("zh-Hant-TW"), Lang::Zh);
        assert_eq!(Lang::from_tag("en-GB"), Lang::En);
        assert_eq!(Lang::from_tag(""), Lang::En);
        set(Lang::Zh);
        assert_eq!(tf(Key::StateMissing, &[&3]), "缺少 3 帧");
        set(Lang::En);
        assert_eq!(tf(Key::ManyWaiting, &[&3, &"12 min 40 s"]), "3 recordings waiting to upload, 12 min 40 s of audio");
        assert_eq!(by_name("title.recordings"), Some("Recordings in Kafka"));
    }
}
