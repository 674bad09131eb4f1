//! The config parser never panics: any text is a config or an error that
//! names what is wrong.

use proptest::prelude::*;
use relaycache_config::{Config, DEFAULT_CONFIG_YAML};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_is_a_config_or_an_error(text in "\\PC{0,400}") {
        if let Ok(config) = Config::from_yaml(&text) {
            let _ = config.validate();
        }
    }

    #[test]
    fn a_damaged_default_is_a_config_or_an_error(
        at in any::<prop::sample::Index>(),
        replacement in "[ -~\n]{0,12}",
        cut in any::<prop::sample::Index>(),
    ) {
        let text = DEFAULT_CONFIG_YAML;
        let start = at.index(text.len());
        let start = (0..=start).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (start + cut.index(16)).min(text.len());
        let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        let damaged = format!("{}{}{}", &text[..start], replacement, &text[end..]);
        if let Ok(config) = Config::from_yaml(&damaged) {
            let _ = config.validate();
        }
    }
}
