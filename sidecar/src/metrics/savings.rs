//! What hits saved: the tokens of every answer served from cache, by
//! model and class, and their price in dollars.
//!
//! A model's counters and price are resolved once, the first time one of
//! its answers is served from cache; after that a hit takes a read lock,
//! one map lookup and a few atomic additions. Model names come from
//! answers, so their number is bounded: past [`MODEL_LABEL_LIMIT`] models,
//! further ones are counted under `other`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::metric_set;
use crate::config::{ModelPrice, PriceTable};
use crate::entry::TokenUsage;

/// Distinct model labels before further models are counted as `other`.
pub const MODEL_LABEL_LIMIT: usize = 50;

/// The label of answers that name no model.
const NO_MODEL: &str = "unknown";

/// The label of models past [`MODEL_LABEL_LIMIT`].
const OTHER_MODELS: &str = "other";

/// The class a token is priced at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenClass {
    /// Input not read from the provider's prompt cache.
    Input,
    /// Output.
    Output,
    /// Input read from the provider's prompt cache.
    CacheRead,
    /// Input written to the provider's prompt cache.
    CacheCreation,
}

impl TokenClass {
    /// Every class, in the order of [`TokenUsage`]'s fields.
    pub const ALL: [TokenClass; 4] = [
        TokenClass::Input,
        TokenClass::Output,
        TokenClass::CacheRead,
        TokenClass::CacheCreation,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenClass::Input => "input",
            TokenClass::Output => "output",
            TokenClass::CacheRead => "cache_read",
            TokenClass::CacheCreation => "cache_creation",
        }
    }
}

impl EncodeLabelValue for TokenClass {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The label of dollar counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The model, as answers name it, or `other` / `unknown`.
    pub model: String,
}

/// The labels of token counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelClassLabels {
    /// The model, as answers name it, or `other` / `unknown`.
    pub model: String,
    /// The token class.
    pub class: TokenClass,
}

/// A counter of dollars.
pub type DollarCounter = Counter<f64, AtomicU64>;

metric_set! {
    /// The exported families of what hits saved.
    pub struct SavingsFamilies {
        /// US dollars that answers served from cache would have cost, by
        /// model (priced models only; see cache.prices)
        cost: Family<ModelLabels, DollarCounter> => "cost_saved_usd",
        /// Tokens of answers served from cache, by model and class (input,
        /// output, cache_read, cache_creation)
        tokens: Family<ModelClassLabels, Counter> => "tokens_saved",
    }
}

/// One model's counters, resolved once.
struct ModelSavings {
    price: Option<ModelPrice>,
    hits: Counter,
    tokens: [Counter; 4],
    cost: Option<DollarCounter>,
}

impl ModelSavings {
    fn reading(&self) -> ModelSaved {
        ModelSaved {
            hits: self.hits.get(),
            input_tokens: self.tokens[0].get(),
            output_tokens: self.tokens[1].get(),
            cache_read_tokens: self.tokens[2].get(),
            cache_creation_tokens: self.tokens[3].get(),
            saved_usd: self.cost.as_ref().map_or(0.0, Counter::get),
        }
    }
}

/// What hits of one model saved, as `/stats` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSaved {
    /// Answers served from cache.
    pub hits: u64,
    /// Input tokens (not from the provider's prompt cache).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_tokens: u64,
    /// US dollars, 0 for models without a price.
    pub saved_usd: f64,
}

/// What hits saved, by model.
pub struct SavingsMetrics {
    prices: PriceTable,
    families: SavingsFamilies,
    models: RwLock<HashMap<Arc<str>, Arc<ModelSavings>>>,
    label_limit: usize,
}

impl SavingsMetrics {
    /// Counters priced with `prices`.
    pub fn new(prices: PriceTable) -> Self {
        Self::with_label_limit(prices, MODEL_LABEL_LIMIT)
    }

    fn with_label_limit(prices: PriceTable, label_limit: usize) -> Self {
        Self {
            prices,
            families: SavingsFamilies::default(),
            models: RwLock::default(),
            label_limit,
        }
    }

    pub(super) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.families.register(registry);
    }

    /// Counts one answer of `model` served from cache; returns the dollars
    /// it saved when the model has a price.
    pub fn count_hit(&self, model: Option<&str>, usage: TokenUsage) -> Option<f64> {
        let model = self.resolve(model.unwrap_or(NO_MODEL));
        model.hits.inc();
        let by_class = [
            usage.input,
            usage.output,
            usage.cache_read,
            usage.cache_creation,
        ];
        for (counter, tokens) in model.tokens.iter().zip(by_class) {
            counter.inc_by(tokens);
        }
        let price = model.price?;
        let dollars = price.cost(
            usage.input,
            usage.output,
            usage.cache_read,
            usage.cache_creation,
        );
        if let Some(cost) = &model.cost {
            cost.inc_by(dollars);
        }
        Some(dollars)
    }

    /// The counters of `model`, resolved on its first hit.
    fn resolve(&self, model: &str) -> Arc<ModelSavings> {
        // A poisoned lock only means a panic elsewhere while it was held;
        // the map itself is always whole.
        let known = self.models.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = known.get(model) {
            return Arc::clone(found);
        }
        let full = known.len() >= self.label_limit;
        drop(known);
        let label = if full { OTHER_MODELS } else { model };
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = models.get(label) {
            return Arc::clone(found);
        }
        // `other` mixes models, so it has no one price.
        let price = (label != OTHER_MODELS)
            .then(|| self.prices.price(model).copied())
            .flatten();
        let labels = |class| ModelClassLabels {
            model: label.to_string(),
            class,
        };
        let resolved = Arc::new(ModelSavings {
            price,
            hits: Counter::default(),
            tokens: TokenClass::ALL
                .map(|class| self.families.tokens.get_or_create(&labels(class)).clone()),
            cost: price.map(|_| {
                self.families
                    .cost
                    .get_or_create(&ModelLabels {
                        model: label.to_string(),
                    })
                    .clone()
            }),
        });
        models.insert(Arc::from(label), Arc::clone(&resolved));
        resolved
    }

    /// `/stats` readings by model, and the total in dollars.
    pub fn readings(&self) -> (BTreeMap<String, ModelSaved>, f64) {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let by_model: BTreeMap<String, ModelSaved> = models
            .iter()
            .map(|(name, savings)| (name.to_string(), savings.reading()))
            .collect();
        let total = by_model.values().map(|saved| saved.saved_usd).sum();
        (by_model, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input,
            output,
            cache_read: 0,
            cache_creation: 0,
        }
    }

    #[test]
    fn models_past_the_limit_are_counted_as_other_without_a_price() {
        let savings = SavingsMetrics::with_label_limit(PriceTable::new(&BTreeMap::new()), 2);
        assert!(savings.count_hit(Some("gpt-4o"), usage(1, 1)).is_some());
        assert_eq!(savings.count_hit(Some("house-a"), usage(1, 1)), None);
        // Two labels taken: a third model, even a priced one, is `other`.
        assert_eq!(savings.count_hit(Some("gpt-4o-mini"), usage(5, 5)), None);
        assert_eq!(savings.count_hit(Some("house-b"), usage(2, 2)), None);
        // A model that has its label keeps it.
        assert!(savings.count_hit(Some("gpt-4o"), usage(1, 1)).is_some());
        let (models, total) = savings.readings();
        assert_eq!(
            models.keys().collect::<Vec<_>>(),
            ["gpt-4o", "house-a", "other"]
        );
        assert_eq!(models["other"].hits, 2);
        assert_eq!(models["other"].input_tokens, 7);
        assert_eq!(models["gpt-4o"].hits, 2);
        let gpt_4o = 2.0 * (2.5 + 10.0) / 1e6;
        assert!((total - gpt_4o).abs() < 1e-12, "{total}");
    }

    #[test]
    fn answers_without_a_model_are_unknown() {
        let savings = SavingsMetrics::new(PriceTable::new(&BTreeMap::new()));
        assert_eq!(savings.count_hit(None, usage(3, 4)), None);
        let (models, _) = savings.readings();
        assert_eq!(models["unknown"].output_tokens, 4);
    }
}
