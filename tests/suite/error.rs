//! Errors (src/error.rs): every message names the argument and the fix, and converts into candle's.

use advtrain::{Error, Fgm};

#[test]
fn errors_convert_into_candle_errors_with_their_message() {
    fn user_loop() -> candle_core::Result<()> {
        Fgm::new(-1.0)?;
        Ok(())
    }
    let text = user_loop().unwrap_err().to_string();
    assert!(text.contains("eps") && text.contains("fix"), "{text}");
}

#[test]
fn candle_errors_pass_through_unchanged() {
    let inner = candle_core::Error::Msg("boom".into());
    let ours: Error = inner.into();
    assert!(matches!(ours, Error::Candle(_)));
    let back: candle_core::Error = ours.into();
    assert!(back.to_string().contains("boom"));
}

#[test]
fn guard_message_says_how_to_enable_second_order() {
    let text = Error::SecondOrderDisabled {
        what: "gradient penalty",
    }
    .to_string();
    assert!(text.contains("CANDLE_GRAD_DO_NOT_DETACH=1") && text.contains(".cargo/config.toml"));
    assert!(text.contains("finite-difference"));
}
