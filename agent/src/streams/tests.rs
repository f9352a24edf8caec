use super::*;
use crate::testing::TestPods;
use std::time::Duration;

fn logs_request(uid: &str) -> StreamRequest {
    StreamRequest::Logs {
        pod_uid: uid.into(),
        container: "c".into(),
        follow: false,
        previous: false,
        timestamps: false,
        tail_lines: -1,
        since_seconds: 0,
        limit_bytes: 0,
    }
}

fn exec_request(command: &[&str], stdin: bool) -> StreamRequest {
    StreamRequest::Exec {
        pod_uid: "p".into(),
        container: "c".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: true,
        tty: false,
    }
}

/// Next frame, failing the test after 10 s.
async fn next(rx: &Receiver<Frame>) -> Frame {
    crate::dial::timeout(Duration::from_secs(10), "the next frame", async {
        Ok(rx.recv().await?)
    })
    .await
    .unwrap()
}

/// Nothing arrives for a while.
async fn quiet(rx: &Receiver<Frame>) -> bool {
    future::or(async { rx.recv().await.is_err() }, async {
        smol::Timer::after(Duration::from_millis(300)).await;
        true
    })
    .await
}

#[test]
fn logs_stop_at_the_granted_credit_and_resume_with_more() {
    let pods = Arc::new(TestPods::default());
    let size = INITIAL_STREAM_CREDIT as usize * 2 + 1000;
    let log: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    pods.logs.lock().unwrap().push(("p".into(), log.clone()));
    let (out, rx) = async_channel::unbounded();
    let streams = Streams::new(pods, out);
    smol::block_on(async {
        streams.open(7, logs_request("p"));
        let mut got = Vec::new();
        while got.len() < INITIAL_STREAM_CREDIT as usize {
            match next(&rx).await {
                Frame::StreamData {
                    stream: 7,
                    channel: CHANNEL_STDOUT,
                    data,
                } => got.extend(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            got.len(),
            INITIAL_STREAM_CREDIT as usize,
            "sent beyond the credit"
        );
        assert!(quiet(&rx).await, "sent without credit");
        streams.credit(7, u32::MAX);
        loop {
            match next(&rx).await {
                Frame::StreamData { data, .. } => got.extend(data),
                Frame::StreamClose { stream: 7, error } => {
                    assert_eq!(error, "");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(got == log, "log bytes differ");
        assert_eq!(streams.len(), 0);
    });
}

#[test]
fn exec_relays_stdin_stdout_stderr_and_the_exit_code() {
    let pods = Arc::new(TestPods::default());
    let (out, rx) = async_channel::unbounded();
    let streams = Streams::new(pods, out);
    smol::block_on(async {
        streams.open(
            1,
            exec_request(
                &["sh", "-c", "read x; echo got $x; echo oops >&2; exit 3"],
                true,
            ),
        );
        streams.data(1, CHANNEL_STDIN, b"hello\n".to_vec());
        let (mut stdout, mut stderr, mut status, mut credited) = (vec![], vec![], vec![], 0);
        loop {
            match next(&rx).await {
                Frame::StreamData {
                    channel: CHANNEL_STDOUT,
                    data,
                    ..
                } => stdout.extend(data),
                Frame::StreamData {
                    channel: CHANNEL_STDERR,
                    data,
                    ..
                } => stderr.extend(data),
                Frame::StreamData {
                    channel: CHANNEL_ERROR,
                    data,
                    ..
                } => status.extend(data),
                Frame::StreamCredit { stream: 1, bytes } => credited += bytes,
                Frame::StreamClose { stream: 1, error } => {
                    assert_eq!(error, "");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(String::from_utf8_lossy(&stdout), "got hello\n");
        assert_eq!(String::from_utf8_lossy(&stderr), "oops\n");
        assert_eq!(credited, 6, "stdin bytes are acknowledged with credit");
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    });
}

#[test]
fn exec_success_and_stdin_eof() {
    let pods = Arc::new(TestPods::default());
    let (out, rx) = async_channel::unbounded();
    let streams = Streams::new(pods, out);
    smol::block_on(async {
        streams.open(2, exec_request(&["wc", "-c"], true));
        streams.data(2, CHANNEL_STDIN, b"abcd".to_vec());
        streams.data(2, CHANNEL_STDIN, Vec::new());
        let (mut stdout, mut status) = (vec![], vec![]);
        loop {
            match next(&rx).await {
                Frame::StreamData {
                    channel: CHANNEL_STDOUT,
                    data,
                    ..
                } => stdout.extend(data),
                Frame::StreamData {
                    channel: CHANNEL_ERROR,
                    data,
                    ..
                } => status.extend(data),
                Frame::StreamClose { .. } => break,
                _ => {}
            }
        }
        assert_eq!(String::from_utf8_lossy(&stdout).trim(), "4");
        assert_eq!(
            String::from_utf8_lossy(&status),
            r#"{"metadata":{},"status":"Success"}"#
        );
    });
}

#[test]
fn a_stream_that_cannot_start_closes_with_the_reason() {
    let pods = Arc::new(TestPods::default());
    let (out, rx) = async_channel::unbounded();
    let streams = Streams::new(pods, out);
    smol::block_on(async {
        streams.open(3, logs_request("missing"));
        match next(&rx).await {
            Frame::StreamClose { stream: 3, error } => {
                assert!(error.contains("pod missing not found"), "{error}")
            }
            other => panic!("unexpected {other:?}"),
        }
    });
}

#[test]
fn a_stream_the_controller_closes_is_cancelled_silently() {
    let pods = Arc::new(TestPods::default());
    let (out, rx) = async_channel::unbounded();
    let streams = Streams::new(pods, out);
    smol::block_on(async {
        streams.open(4, exec_request(&["sleep", "2"], false));
        smol::Timer::after(Duration::from_millis(200)).await;
        assert_eq!(streams.len(), 1);
        streams.close(4);
        assert_eq!(streams.len(), 0);
        assert!(quiet(&rx).await, "a cancelled stream sends nothing more");
    });
}

#[test]
fn resize_messages_parse() {
    assert_eq!(
        parse_resize(br#"{"Width":120,"Height":40}"#),
        Some((120, 40))
    );
    assert_eq!(parse_resize(b"{}"), None);
    assert_eq!(parse_resize(br#"{"Width":70000,"Height":1}"#), None);
}
