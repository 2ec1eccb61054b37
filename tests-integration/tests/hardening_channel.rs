//! Issue 8 (A2): a reply nested far deeper than any real message is a typed error for the
//! master, which lives on, with both codecs, through a dedicated worker and through a pool; the
//! profile's depth limit holds on both sides.

use exsyst_worker::{
    BootstrapProfile, Codec, DedicatedWorker, StderrMode, WorkerFactory,
    bootstrap::{EXIT_FAILURE, Error as Bootstrap},
    channel::{DEFAULT_MAX_DEPTH, Error as ChannelError},
    pool::Error as PoolError,
};
use tests_integration::workers::hostile::{Act, Expr, Hostile};

use crate::support::*;

/// Deep enough to overflow any thread's stack if decoding recursed once per level.
const DEPTH: u32 = 60_000;

fn factory(codec: Codec) -> WorkerFactory {
    WorkerFactory::with_profile(profile().with_codec(codec))
}

fn assert_too_deep(source: &ChannelError, codec: Codec) {
    match source {
        ChannelError::TooDeep {
            codec: c,
            max_depth,
        } => assert_eq!((*c, *max_depth), (codec, DEFAULT_MAX_DEPTH)),
        other => panic!("expected TooDeep, got {other:?}"),
    }
}

#[test]
fn a_reply_nested_sixty_thousand_deep_is_a_typed_error_and_the_worker_goes_on() {
    for codec in [Codec::MessagePack, Codec::Json] {
        let mut w = factory(codec).create_worker::<Hostile>().unwrap();
        w.send_message(&Act::Nested(DEPTH)).unwrap();
        match w.receive_message::<Expr>() {
            Err(Bootstrap::Channel { pid, source }) => {
                assert_eq!(pid, w.pid());
                assert_too_deep(&source, codec);
            }
            other => panic!("{codec}: expected a channel error, got {other:?}"),
        }
        // The frame was taken whole: the channel is in step, and the worker still answers.
        w.send_message(&Act::Reply("still here".into())).unwrap();
        assert_eq!(w.receive_message::<String>().unwrap(), "still here");
        // Nesting within the limit decodes as usual.
        w.send_message(&Act::Nested(DEFAULT_MAX_DEPTH - 1)).unwrap();
        let mut expr = w.receive_message::<Expr>().unwrap();
        let mut levels = 0;
        while let Expr::Neg(inner) = expr {
            expr = *inner;
            levels += 1;
        }
        assert_eq!((levels, expr), (DEFAULT_MAX_DEPTH - 1, Expr::Lit(0)));
        assert_eq!(w.close().unwrap().code(), Some(0), "{codec}");
    }
}

#[test]
fn a_pool_receive_of_a_nested_reply_is_a_typed_error_and_the_pool_goes_on() {
    for codec in [Codec::MessagePack, Codec::Json] {
        let mut pool = factory(codec)
            .create_worker_pool_builder()
            .size(2)
            .build::<Hostile>()
            .unwrap();
        pool.send_message(1, &Act::Nested(DEPTH)).unwrap();
        match pool.receive_message::<Expr>() {
            Err(PoolError::Worker {
                index: 1, source, ..
            }) => match &*source {
                Bootstrap::Channel { source, .. } => assert_too_deep(source, codec),
                other => panic!("{codec}: expected a channel error from worker 1, got {other:?}"),
            },
            other => panic!("{codec}: expected a channel error from worker 1, got {other:?}"),
        }
        for index in [0, 1] {
            pool.send_message(index, &Act::Reply(format!("worker {index}")))
                .unwrap();
            let limit = timeout(std::time::Duration::from_secs(10));
            let (from, text) = pool.receive_message_timeout::<String>(limit).unwrap();
            assert_eq!((from, text), (index, format!("worker {index}")));
        }
    }
}

/// The profile's depth limit, not the default one, on both sides of the channel.
const SHALLOW: u32 = 8;

#[test]
fn the_profiles_depth_limit_holds_in_the_master() {
    let profile = profile().with_max_depth(SHALLOW);
    for codec in [Codec::MessagePack, Codec::Json] {
        let mut w = DedicatedWorker::spawn::<Hostile>(&profile.clone().with_codec(codec)).unwrap();
        // Far below the default limit, above this one.
        w.send_message(&Act::Nested(100)).unwrap();
        match w.receive_message::<Expr>() {
            Err(Bootstrap::Channel {
                source:
                    ChannelError::TooDeep {
                        codec: c,
                        max_depth,
                    },
                ..
            }) => assert_eq!((c, max_depth), (codec, SHALLOW)),
            other => panic!("{codec}: expected TooDeep, got {other:?}"),
        }
        w.send_message(&Act::Nested(SHALLOW - 2)).unwrap();
        assert!(matches!(w.receive_message::<Expr>(), Ok(Expr::Neg(_))));
        assert_eq!(w.close().unwrap().code(), Some(0), "{codec}");
    }
}

#[test]
fn the_profiles_depth_limit_holds_in_the_worker() {
    let profile = profile()
        .with_max_depth(SHALLOW)
        .with_stderr(StderrMode::Capture);
    for codec in [Codec::MessagePack, Codec::Json] {
        let mut w = DedicatedWorker::spawn::<Hostile>(&profile.clone().with_codec(codec)).unwrap();
        let mut deep = Expr::Lit(0);
        for _ in 0..100 {
            deep = Expr::Neg(Box::new(deep));
        }
        // Not an `Act`: with the default limit the worker would fail to decode it; with this
        // one it refuses it for its depth before decoding.
        w.send_message(&deep).unwrap();
        match w.receive_message::<String>() {
            Err(Bootstrap::WorkerExited {
                status,
                stderr_tail,
                ..
            }) => {
                assert_eq!(status.code(), Some(EXIT_FAILURE), "{stderr_tail}");
                let said = format!("{codec} payload nested deeper than {SHALLOW} levels");
                assert!(stderr_tail.contains(&said), "{codec}: {stderr_tail}");
            }
            other => panic!("{codec}: expected WorkerExited, got {other:?}"),
        }
    }
}

#[test]
fn a_depth_limit_of_zero_is_a_configuration_error_and_the_default_is_kept_by_old_profiles() {
    match DedicatedWorker::spawn::<Hostile>(&profile().with_max_depth(0)) {
        Err(Bootstrap::Config { what, why }) => {
            assert_eq!((what, why.as_str()), ("max_depth", "must be at least 1"))
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let old: BootstrapProfile = serde_json::from_str(r#"{"max_frame_len": 1024}"#).unwrap();
    assert_eq!(
        (old.max_frame_len(), old.max_depth()),
        (1024, DEFAULT_MAX_DEPTH)
    );
}
