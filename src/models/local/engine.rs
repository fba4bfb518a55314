//! The generation loop of a local LLM, on a thread of its own: continuous batching over KV-cache slots.
//!
//! Each step gathers one row per decoding sequence plus a bounded chunk of prompt tokens from sequences still
//! being prefilled, runs them through the model in one forward pass, and samples from the rows that produced
//! logits. A request for `n` samples prefills its prompt once and then forks the cache into `n` sequences.
//! Requests join and leave between steps, so a long answer never holds up the others.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::LocalError;
use super::guided::{Guide, GuideState};
use super::sampler::{Rng, SamplerSettings, sample, sample_where};
use super::tokenizer::TextTokenizer;
use super::transformer::{Decoder, Row};
use sdg_operators::model::sample_seed;

/// One generation request.
pub struct GenerateJob {
    pub prompt: Vec<u32>,
    pub n: usize,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub sampler: SamplerSettings,
    /// Generate exactly `max_tokens`, through end-of-text tokens (benchmarks).
    pub ignore_eos: bool,
    /// Structured output: every sampled token keeps the reply valid JSON of this schema.
    pub guide: Option<Arc<Guide>>,
    pub reply: tokio::sync::oneshot::Sender<Result<Generated, LocalError>>,
}

/// What a job produced.
#[derive(Debug, Clone)]
pub struct Generated {
    pub texts: Vec<String>,
    /// Generated token ids per sample (stop token excluded).
    pub tokens: Vec<Vec<u32>>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From the job's start to its first sampled token.
    pub first_token_ms: f64,
}

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step, shared by the sequences being prefilled.
    pub prefill_chunk: usize,
}

struct Sequence {
    job: usize,
    sample: usize,
    slot: usize,
    /// Tokens already in the cache.
    position: usize,
    /// Tokens still to feed: the prompt's remainder while prefilling, then the last sampled token.
    pending: VecDeque<u32>,
    generated: Vec<u32>,
    rng: Rng,
    prefilling: bool,
    /// Where a guided reply is within its schema.
    guide: Option<GuideState>,
}

struct ActiveJob {
    job: GenerateJob,
    texts: Vec<Option<(String, Vec<u32>)>>,
    started: Instant,
    first_token: Option<f64>,
}

struct Scheduler<M: Decoder> {
    model: Arc<M>,
    tokenizer: Arc<TextTokenizer>,
    limits: Limits,
    caches: Vec<M::Cache>,
    free_slots: Vec<usize>,
    sequences: Vec<Sequence>,
    jobs: Vec<Option<ActiveJob>>,
    /// The text of each vocabulary entry alone, built on the first guided job.
    token_texts: Option<Arc<Vec<String>>>,
}

/// Serves jobs from `jobs` until every sender is gone.
pub fn run<M: Decoder>(
    model: Arc<M>,
    tokenizer: Arc<TextTokenizer>,
    limits: Limits,
    jobs: crossbeam_channel::Receiver<GenerateJob>,
) {
    let mut scheduler = Scheduler {
        model,
        tokenizer,
        limits,
        caches: Vec::new(),
        free_slots: Vec::new(),
        sequences: Vec::new(),
        jobs: Vec::new(),
        token_texts: None,
    };
    let mut waiting: VecDeque<GenerateJob> = VecDeque::new();
    loop {
        if scheduler.sequences.is_empty() && waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        waiting.extend(jobs.try_iter());
        // Admit while there is room; a job larger than the batch runs alone.
        while let Some(job) = waiting.front() {
            let busy = scheduler.sequences.len();
            if busy > 0 && busy + job.n.max(1) > limits.max_batch {
                break;
            }
            let job = waiting.pop_front().expect("front exists");
            scheduler.admit(job);
        }
        scheduler.drop_abandoned();
        if scheduler.sequences.is_empty() {
            continue;
        }
        if let Err(error) = scheduler.step() {
            scheduler.fail_all(error);
        }
    }
}

impl<M: Decoder> Scheduler<M> {
    fn admit(&mut self, job: GenerateJob) {
        let limit = self.model.max_positions();
        if job.prompt.is_empty() {
            let _ = job.reply.send(Err(LocalError::Prompt("the prompt has no tokens".into())));
            return;
        }
        if job.prompt.len() >= limit {
            let _ = job.reply.send(Err(LocalError::PromptTooLong { tokens: job.prompt.len(), context: limit }));
            return;
        }
        let index = match self.jobs.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.jobs.push(None);
                self.jobs.len() - 1
            }
        };
        let slot = self.allocate_slot();
        self.sequences.push(Sequence {
            job: index,
            sample: 0,
            slot,
            position: 0,
            pending: job.prompt.iter().copied().collect(),
            generated: Vec::new(),
            rng: Rng::new(sample_seed(job.sampler.seed, 0)),
            prefilling: true,
            guide: job.guide.as_ref().map(|g| g.start()),
        });
        if job.guide.is_some() && self.token_texts.is_none() {
            self.token_texts = Some(Arc::new(self.tokenizer.token_texts(self.model.config().vocab)));
        }
        let n = job.n.max(1);
        self.jobs[index] = Some(ActiveJob { job, texts: vec![None; n], started: Instant::now(), first_token: None });
    }

    fn allocate_slot(&mut self) -> usize {
        self.free_slots.pop().unwrap_or_else(|| {
            self.caches.push(self.model.new_cache());
            self.caches.len() - 1
        })
    }

    /// Stops work nobody waits for any more (the caller gave up or the run was interrupted).
    fn drop_abandoned(&mut self) {
        let abandoned: Vec<usize> = self
            .jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| j.as_ref().filter(|j| j.job.reply.is_closed()).map(|_| i))
            .collect();
        for index in abandoned {
            self.jobs[index] = None;
            let (gone, kept): (Vec<_>, Vec<_>) = self.sequences.drain(..).partition(|s| s.job == index);
            self.sequences = kept;
            for sequence in gone {
                self.release(sequence.slot);
            }
        }
    }

    fn release(&mut self, slot: usize) {
        M::clear_cache(&mut self.caches[slot]);
        self.free_slots.push(slot);
    }

    fn step(&mut self) -> Result<(), LocalError> {
        // Decoding rows first, then prompt chunks up to the budget.
        let mut rows = Vec::new();
        let mut owners = Vec::new();
        for (i, sequence) in self.sequences.iter().enumerate() {
            if !sequence.prefilling {
                let token = *sequence.pending.front().expect("a decoding sequence has its last token pending");
                rows.push(Row { slot: sequence.slot, position: sequence.position, token, logits: true });
                owners.push(i);
            }
        }
        let mut budget = self.limits.prefill_chunk.max(1);
        for (i, sequence) in self.sequences.iter().enumerate() {
            if !sequence.prefilling || budget == 0 {
                continue;
            }
            let take = sequence.pending.len().min(budget);
            budget -= take;
            for (k, &token) in sequence.pending.iter().take(take).enumerate() {
                let last = k + 1 == sequence.pending.len();
                rows.push(Row { slot: sequence.slot, position: sequence.position + k, token, logits: last });
                owners.push(i);
            }
        }
        let logits = self.model.forward(&rows, &mut self.caches)?;

        // Advance positions and consume what was fed.
        let mut fed = vec![0usize; self.sequences.len()];
        for &owner in &owners {
            fed[owner] += 1;
        }
        for (sequence, count) in self.sequences.iter_mut().zip(&fed) {
            sequence.position += count;
            sequence.pending.drain(..*count);
        }
        let mut with_logits = rows.iter().zip(&owners).filter(|(r, _)| r.logits).map(|(_, &o)| o);
        let mut finished = Vec::new();
        let mut forks = Vec::new();
        for row_logits in &logits {
            let owner = with_logits.next().expect("one owner per logits row");
            if self.sequences[owner].prefilling {
                self.sequences[owner].prefilling = false;
                let n = self.jobs[self.sequences[owner].job].as_ref().map_or(1, |j| j.texts.len());
                for sample in 1..n {
                    forks.push((owner, sample, row_logits));
                }
            }
            if self.advance(owner, row_logits) {
                finished.push(owner);
            }
        }
        for (parent, sample, row_logits) in forks {
            let slot = self.allocate_slot();
            self.caches[slot] = self.model.fork_cache(&self.caches[self.sequences[parent].slot])?;
            let parent = &self.sequences[parent];
            let seed = self.jobs[parent.job].as_ref().map_or(0, |j| j.job.sampler.seed);
            let guide = self.jobs[parent.job].as_ref().and_then(|j| j.job.guide.as_ref()).map(|g| g.start());
            self.sequences.push(Sequence {
                job: parent.job,
                sample,
                slot,
                position: parent.position,
                pending: VecDeque::new(),
                generated: Vec::new(),
                rng: Rng::new(sample_seed(seed, sample as u64)),
                prefilling: false,
                guide,
            });
            let child = self.sequences.len() - 1;
            if self.advance(child, row_logits) {
                finished.push(child);
            }
        }
        finished.sort_unstable();
        for index in finished.into_iter().rev() {
            let sequence = self.sequences.swap_remove(index);
            self.finish(sequence);
        }
        Ok(())
    }

    /// Samples the next token of sequence `index`; true when the sequence is done.
    fn advance(&mut self, index: usize, logits: &[f32]) -> bool {
        let max_positions = self.model.max_positions();
        let sequence = &mut self.sequences[index];
        let Some(active) = self.jobs[sequence.job].as_mut() else { return true };
        active.first_token.get_or_insert_with(|| active.started.elapsed().as_secs_f64() * 1000.0);
        let token = match (&active.job.guide, &mut sequence.guide, &self.token_texts) {
            (Some(guide), Some(state), Some(texts)) => {
                // This token included; the context ends a sequence after the token sampled at its last position.
                let tokens_left = (active.job.max_tokens.saturating_sub(sequence.generated.len()))
                    .min(max_positions.saturating_sub(sequence.position));
                let rng = &mut sequence.rng;
                match guided_sample(logits, &active.job.sampler, rng, guide, state, texts, tokens_left) {
                    Some((token, next)) => {
                        *state = next;
                        token
                    }
                    // No token continues the reply (a vocabulary without the needed characters): stop.
                    None => return true,
                }
            }
            _ => sample(logits, &active.job.sampler, &mut sequence.rng),
        };
        if !active.job.ignore_eos && self.tokenizer.stop_ids.contains(&token) {
            return true;
        }
        sequence.generated.push(token);
        if sequence.guide.as_ref().is_some_and(GuideState::is_complete) {
            return true;
        }
        if sequence.generated.len() >= active.job.max_tokens || sequence.position + 1 >= max_positions {
            return true;
        }
        if !active.job.stop.is_empty()
            && let Ok(text) = self.tokenizer.decode(&sequence.generated)
            && active.job.stop.iter().any(|s| text.contains(s.as_str()))
        {
            return true;
        }
        sequence.pending.push_back(token);
        false
    }

    fn finish(&mut self, sequence: Sequence) {
        self.release(sequence.slot);
        let Some(active) = self.jobs[sequence.job].as_mut() else { return };
        let text = match self.tokenizer.decode(&sequence.generated) {
            Ok(text) => cut_at_stop(text, &active.job.stop),
            Err(error) => {
                let active = self.jobs[sequence.job].take().expect("checked above");
                let _ = active.job.reply.send(Err(error));
                return;
            }
        };
        active.texts[sequence.sample] = Some((text, sequence.generated));
        // Every sample done: answer.
        if active.texts.iter().all(Option::is_some) {
            let active = self.jobs[sequence.job].take().expect("checked above");
            let (texts, tokens): (Vec<String>, Vec<Vec<u32>>) =
                active.texts.into_iter().map(|t| t.expect("all present")).unzip();
            let completion_tokens = tokens.iter().map(|t| t.len() as u64).sum();
            let _ = active.job.reply.send(Ok(Generated {
                texts,
                tokens,
                prompt_tokens: active.job.prompt.len() as u64,
                completion_tokens,
                first_token_ms: active.first_token.unwrap_or_default(),
            }));
        }
    }

    fn fail_all(&mut self, error: LocalError) {
        tracing::error!(%error, "local model step failed");
        for sequence in std::mem::take(&mut self.sequences) {
            self.release(sequence.slot);
        }
        for active in self.jobs.iter_mut().filter_map(Option::take) {
            let _ = active.job.reply.send(Err(LocalError::Prompt(format!("generation failed: {error}"))));
        }
    }
}

/// Samples a token that keeps a guided reply valid (see [`sample_where`]), with the state after it. With
/// `tokens_left` (this one included) it also keeps the reply closable in time: a token is taken only when the
/// shortest closing text after it still fits, so the budget running out steers the model to close its
/// strings and objects instead of cutting the JSON off.
fn guided_sample(
    logits: &[f32],
    settings: &SamplerSettings,
    rng: &mut Rng,
    guide: &Guide,
    state: &GuideState,
    texts: &[String],
    tokens_left: usize,
) -> Option<(u32, GuideState)> {
    // A budget too small to close from here cannot be kept; then the reply is only kept valid.
    let closing_limit =
        if state.closing_length(guide) <= tokens_left { tokens_left.saturating_sub(1) } else { usize::MAX };
    let mut next = None;
    let token = sample_where(logits, settings, rng, |token| {
        next = texts
            .get(token as usize)
            .and_then(|text| state.after(guide, text))
            .filter(|after| after.closing_length(guide) <= closing_limit);
        next.is_some()
    })?;
    next.map(|state| (token, state))
}

/// The text up to the earliest stop string.
fn cut_at_stop(mut text: String, stops: &[String]) -> String {
    if let Some(at) = stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(at);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A model that always wants one more `a`, over a vocabulary of printable ASCII characters and a few words:
    /// unguarded, it would write one string until the budget cuts it off.
    #[test]
    fn a_guided_reply_closes_its_json_before_the_token_budget_ends() {
        let guide = Guide::from_schema(&json!({"type": "object", "properties": {"question": {"type": "string"},
            "answer": {"type": "string"}, "level": {"enum": ["easy", "hard"]}, "steps": {"type": "integer"}}}));
        let mut texts: Vec<String> = (b' '..=b'~').map(|b| (b as char).to_string()).collect();
        texts.extend(["aaaa", "question", "\"answer\": \"", "easy"].map(String::from));
        let logits: Vec<f32> = texts
            .iter()
            .map(|t| match t.as_str() {
                "aaaa" => 9.0,
                "a" => 8.0,
                "\"" => 7.0,
                "{" => 6.0,
                _ => t.len() as f32 * 0.01,
            })
            .collect();
        let shortest = guide.start().closing_length(&guide);
        for (max_tokens, temperature) in [(shortest, 0.0), (shortest + 7, 0.0), (60, 0.0), (60, 0.9), (200, 0.9)] {
            let settings = SamplerSettings { temperature, top_k: 0, top_p: 1.0, seed: 7 };
            let mut rng = Rng::new(7);
            let mut state = guide.start();
            let mut reply = String::new();
            for used in 0..max_tokens {
                let (token, next) =
                    guided_sample(&logits, &settings, &mut rng, &guide, &state, &texts, max_tokens - used).unwrap();
                reply.push_str(&texts[token as usize]);
                state = next;
                if state.is_complete() {
                    break;
                }
            }
            assert!(state.is_complete(), "{max_tokens} tokens at t={temperature}: {reply}");
            let value: serde_json::Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(value.as_object().unwrap().len(), 4, "{reply}");
            if max_tokens > shortest + 4 {
                assert!(reply.contains("aa"), "the model's wish is followed while the budget allows: {reply}");
            }
        }
    }

    #[test]
    fn text_is_cut_at_the_earliest_stop_string() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(cut_at_stop("one END two\n\nthree".into(), &stops), "one ");
        assert_eq!(cut_at_stop("no stop here".into(), &stops), "no stop here");
        assert_eq!(cut_at_stop("x".into(), &[String::new()]), "x");
    }
}
