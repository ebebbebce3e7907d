//! Text ↔ token ids for a loaded model, from the model file's own metadata: the vocabulary, the
//! special tokens, whether to add BOS, which tokens end a turn, and the chat template.

mod chat_template;
mod gguf;

pub use chat_template::{ChatTemplate, Message};

use crate::error::{Error, Result};
use crate::model::load::gguf::GgufFile;

/// A model's tokenizer and chat conventions.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eos: Option<u32>,
    stop_ids: Vec<u32>,
    chat: ChatTemplate,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let inner = gguf::build(file)?;
        let id = |key: &str| file.opt_usize(key).map(|v| v.map(|x| x as u32));
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let mut stop_ids: Vec<u32> = [eos, id("tokenizer.ggml.eot_token_id")?, id("tokenizer.ggml.eom_token_id")?]
            .into_iter()
            .flatten()
            .collect();
        stop_ids.dedup();
        let text = |tok: Option<u32>| tok.and_then(|t| inner.id_to_token(t)).unwrap_or_default();
        let template = file.string("tokenizer.chat_template").ok();
        let chat = ChatTemplate::new(template, &text(bos), &text(eos))?;
        let add_bos = file.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false) && bos.is_some();
        let add_eos = file.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();
        let mut tokenizer = Self { inner, bos, add_bos, add_eos, eos, stop_ids, chat };
        if !tokenizer.chat.from_model {
            // ChatML's end of turn stops generation when the vocabulary has it.
            if let Some(im_end) = tokenizer.inner.token_to_id("<|im_end|>") {
                tokenizer.stop_ids.push(im_end);
            }
        }
        Ok(tokenizer)
    }

    /// Tokenizes a raw prompt, adding BOS/EOS as the model file asks. Special tokens written in the
    /// text are recognised as such.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_plain(text)?;
        // As llama.cpp and transformers do: BOS is added even when the text already starts with one.
        if self.add_bos {
            ids.insert(0, self.bos.unwrap_or_default());
        }
        if self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// Renders a conversation with the chat template and tokenizes it. The template decides about
    /// BOS (as Hugging Face's `apply_chat_template` does), except that a model which asks for BOS gets
    /// one when its template did not write it.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<(String, Vec<u32>)> {
        let text = self.chat.render(messages, true)?;
        let mut ids = self.encode_plain(&text)?;
        if self.add_bos && ids.first() != self.bos.as_ref() {
            ids.insert(0, self.bos.unwrap_or_default());
        }
        Ok((text, ids))
    }

    /// The chat template text of a conversation, without tokenizing it.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.chat.render(messages, add_generation_prompt)
    }

    /// Token ids of `text` without any added special tokens.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out. May end in a partial UTF-8 character (shown as
    /// U+FFFD): the incremental detokenizer holds such text back.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Every token id that is not an added or special token: what random benchmark prompts draw from.
    pub fn ordinary_ids(&self) -> Vec<u32> {
        let added = self.inner.get_added_tokens_decoder();
        (0..self.inner.get_vocab_size(true) as u32).filter(|id| !added.contains_key(id)).collect()
    }

    /// How `other` differs from this tokenizer in its vocabulary or special tokens (`None`: it does
    /// not): a speculative draft model must produce the very token ids the target reads.
    pub fn difference(&self, other: &Tokenizer) -> Option<String> {
        let (mine, theirs) = (self.inner.get_vocab_size(true), other.inner.get_vocab_size(true));
        if mine != theirs {
            return Some(format!("its vocabulary has {theirs} tokens, the target's {mine}"));
        }
        if let Some(id) = (0..mine as u32).find(|&id| self.inner.id_to_token(id) != other.inner.id_to_token(id)) {
            let text = |t: &Tokenizer| t.inner.id_to_token(id).unwrap_or_default();
            return Some(format!("token {id} is {:?} there and {:?} in the target", text(other), text(self)));
        }
        let specials = |t: &Tokenizer| (t.bos, t.eos, t.stop_ids.clone(), t.add_bos);
        if specials(self) != specials(other) {
            return Some("its special tokens (BOS, EOS, end of turn) differ from the target's".into());
        }
        None
    }

    /// Whether generating `id` ends the reply (end of sequence, end of turn).
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }
}
