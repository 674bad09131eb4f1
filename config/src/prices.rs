//! What answers cost, per model: the table that turns the tokens of a
//! cache hit into the dollars it saved.
//!
//! Prices are US dollars per million tokens, by class. The built-in table
//! ([`DEFAULT_PRICES`]) holds list prices of current Anthropic and OpenAI
//! models; `cache.prices` overrides or adds models. A model is priced by
//! the longest table name that is the model itself or a prefix of it
//! followed by `-` or `@`, so `claude-sonnet-4-5` prices
//! `claude-sonnet-4-5-20250929` and `gpt-4o-mini` wins over `gpt-4o`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The price of one model's tokens, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Input tokens not read from the provider's prompt cache.
    pub input: f64,
    /// Output (completion) tokens.
    pub output: f64,
    /// Input tokens read from the provider's prompt cache; the input price
    /// when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Input tokens written to the provider's prompt cache; the input
    /// price when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation: Option<f64>,
}

impl ModelPrice {
    const fn new(input: f64, output: f64, cache_read: f64, cache_creation: f64) -> Self {
        Self {
            input,
            output,
            cache_read: Some(cache_read),
            cache_creation: Some(cache_creation),
        }
    }

    /// Dollars for the given token counts.
    pub fn cost(&self, input: u64, output: u64, cache_read: u64, cache_creation: u64) -> f64 {
        let per_token = |price: f64, tokens: u64| price * tokens as f64 / 1_000_000.0;
        per_token(self.input, input)
            + per_token(self.output, output)
            + per_token(self.cache_read.unwrap_or(self.input), cache_read)
            + per_token(self.cache_creation.unwrap_or(self.input), cache_creation)
    }

    /// The prices that are not a finite number of dollars at or above 0,
    /// by field name.
    pub fn invalid_fields(&self) -> Vec<&'static str> {
        let valid = |price: f64| price.is_finite() && price >= 0.0;
        [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cache_read", self.cache_read),
            ("cache_creation", self.cache_creation),
        ]
        .into_iter()
        .filter(|(_, price)| price.is_some_and(|price| !valid(price)))
        .map(|(name, _)| name)
        .collect()
    }
}

/// List prices in US dollars per million tokens (input, output, prompt
/// cache read, prompt cache write), as the providers published them in
/// 2025. Anthropic's cache writes are its 5-minute writes; OpenAI has no
/// write price, so its writes cost the input price.
pub const DEFAULT_PRICES: &[(&str, ModelPrice)] = &[
    ("claude-opus-4-5", ModelPrice::new(5.0, 25.0, 0.5, 6.25)),
    ("claude-opus-4-1", ModelPrice::new(15.0, 75.0, 1.5, 18.75)),
    ("claude-opus-4", ModelPrice::new(15.0, 75.0, 1.5, 18.75)),
    ("claude-sonnet-4-5", ModelPrice::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-sonnet-4", ModelPrice::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-7-sonnet", ModelPrice::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-5-sonnet", ModelPrice::new(3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4-5", ModelPrice::new(1.0, 5.0, 0.1, 1.25)),
    ("claude-3-5-haiku", ModelPrice::new(0.8, 4.0, 0.08, 1.0)),
    ("claude-3-haiku", ModelPrice::new(0.25, 1.25, 0.03, 0.3)),
    ("claude-3-opus", ModelPrice::new(15.0, 75.0, 1.5, 18.75)),
    ("gpt-5", ModelPrice::new(1.25, 10.0, 0.125, 1.25)),
    ("gpt-5-mini", ModelPrice::new(0.25, 2.0, 0.025, 0.25)),
    ("gpt-5-nano", ModelPrice::new(0.05, 0.4, 0.005, 0.05)),
    ("gpt-4.1", ModelPrice::new(2.0, 8.0, 0.5, 2.0)),
    ("gpt-4.1-mini", ModelPrice::new(0.4, 1.6, 0.1, 0.4)),
    ("gpt-4.1-nano", ModelPrice::new(0.1, 0.4, 0.025, 0.1)),
    ("gpt-4o", ModelPrice::new(2.5, 10.0, 1.25, 2.5)),
    ("gpt-4o-mini", ModelPrice::new(0.15, 0.6, 0.075, 0.15)),
    ("o3", ModelPrice::new(2.0, 8.0, 0.5, 2.0)),
    ("o4-mini", ModelPrice::new(1.1, 4.4, 0.275, 1.1)),
    (
        "text-embedding-3-small",
        ModelPrice::new(0.02, 0.0, 0.02, 0.02),
    ),
    (
        "text-embedding-3-large",
        ModelPrice::new(0.13, 0.0, 0.13, 0.13),
    ),
];

/// The built-in prices with `overrides` (from `cache.prices`) on top.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    /// Longest names first, so the first prefix that matches is the longest.
    prices: Vec<(String, ModelPrice)>,
}

impl PriceTable {
    /// The built-in table, with each model in `overrides` replacing or
    /// adding its price.
    pub fn new(overrides: &BTreeMap<String, ModelPrice>) -> Self {
        let mut merged: BTreeMap<String, ModelPrice> = DEFAULT_PRICES
            .iter()
            .map(|(name, price)| (name.to_string(), *price))
            .collect();
        merged.extend(overrides.iter().map(|(name, price)| (name.clone(), *price)));
        let mut prices: Vec<(String, ModelPrice)> = merged.into_iter().collect();
        prices.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self { prices }
    }

    /// The price of `model`, if the table knows it.
    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.prices
            .iter()
            .find(|(name, _)| match model.strip_prefix(name.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with(['-', '@']),
                None => false,
            })
            .map(|(_, price)| price)
    }
}

/// One line per model, by name: the prices of input, output, cache read
/// and cache creation, in US dollars per million tokens.
impl std::fmt::Display for PriceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rows: Vec<&(String, ModelPrice)> = self.prices.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let width = rows
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:width$}  {:>8}  {:>8}  {:>10}  {:>14}   (USD per million tokens)",
            "model", "input", "output", "cache_read", "cache_creation"
        )?;
        for (name, price) in rows {
            writeln!(
                f,
                "{name:width$}  {:>8}  {:>8}  {:>10}  {:>14}",
                price.input,
                price.output,
                price.cache_read.unwrap_or(price.input),
                price.cache_creation.unwrap_or(price.input),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_name_prices_a_model() {
        let table = PriceTable::new(&BTreeMap::new());
        let price = |model: &str| table.price(model).map(|p| p.input);
        assert_eq!(price("claude-sonnet-4-5-20250929"), Some(3.0));
        assert_eq!(price("claude-sonnet-4-5"), Some(3.0));
        assert_eq!(price("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(price("gpt-4o-2024-08-06"), Some(2.5));
        assert_eq!(price("claude-opus-4-5@20251101"), Some(5.0));
        // A name is a prefix only up to a separator: gpt-50 is not gpt-5.
        assert_eq!(price("gpt-50"), None);
        assert_eq!(price("mock-model"), None);
    }

    #[test]
    fn overrides_replace_and_add_models() {
        let overrides = BTreeMap::from([
            ("gpt-4o".to_string(), ModelPrice::new(1.0, 2.0, 0.5, 1.0)),
            (
                "house-model".to_string(),
                ModelPrice {
                    input: 4.0,
                    output: 8.0,
                    cache_read: None,
                    cache_creation: None,
                },
            ),
        ]);
        let table = PriceTable::new(&overrides);
        assert_eq!(table.price("gpt-4o").map(|p| p.input), Some(1.0));
        assert_eq!(table.price("gpt-4o-mini").map(|p| p.input), Some(0.15));
        let house = table.price("house-model-v2").copied().unwrap();
        // Omitted cache prices are the input price.
        assert_eq!(house.cost(0, 0, 1_000_000, 1_000_000), 8.0);
    }

    #[test]
    fn the_table_prints_every_model_once_by_name() {
        let overrides = BTreeMap::from([(
            "a-house-model".to_string(),
            ModelPrice {
                input: 4.0,
                output: 8.0,
                cache_read: None,
                cache_creation: None,
            },
        )]);
        let printed = PriceTable::new(&overrides).to_string();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 1 + DEFAULT_PRICES.len() + 1, "{printed}");
        let house: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(house, ["a-house-model", "4", "8", "4", "4"]);
        assert!(printed.contains("claude-sonnet-4-5 "));
    }

    #[test]
    fn cost_adds_each_class_at_its_price() {
        let sonnet = ModelPrice::new(3.0, 15.0, 0.3, 3.75);
        let cost = sonnet.cost(1_000, 2_000, 10_000, 4_000);
        let expected = (1_000.0 * 3.0 + 2_000.0 * 15.0 + 10_000.0 * 0.3 + 4_000.0 * 3.75) / 1e6;
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    }

    #[test]
    fn negative_and_non_finite_prices_are_named() {
        let mut price = ModelPrice::new(1.0, -1.0, f64::NAN, 1.0);
        assert_eq!(price.invalid_fields(), ["output", "cache_read"]);
        price.output = 1.0;
        price.cache_read = None;
        assert!(price.invalid_fields().is_empty());
    }
}
