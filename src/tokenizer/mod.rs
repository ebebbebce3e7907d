//! Text ↔ token ids for a loaded model, from the model file's own metadata: the vocabulary, the
//! special tokens, whether to add BOS, which tokens end a turn, and the chat template.

mod chat_template;
mod gguf;
mod hf;

pub use chat_template::{ChatTemplate, Message, TemplateKwargs};

use crate::error::{Error, Result};
use crate::model::load::gguf::GgufFile;

/// The special tokens a model's files name.
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    /// Whether a raw prompt starts with BOS.
    add_bos: bool,
    /// Whether a raw prompt ends with EOS.
    add_eos: bool,
    /// Tokens that end a reply.
    stop_ids: Vec<u32>,
}

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
    /// Template variables every conversation gets unless a request overrides them (`--no-think`).
    template_defaults: TemplateKwargs,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let inner = gguf::build(file)?;
        let id = |key: &str| file.opt_usize(key).map(|v| v.map(|x| x as u32));
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let stop_ids: Vec<u32> = [eos, id("tokenizer.ggml.eot_token_id")?, id("tokenizer.ggml.eom_token_id")?]
            .into_iter()
            .flatten()
            .collect();
        let template = file.string("tokenizer.chat_template").ok();
        let add_bos = file.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = file.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        Self::assemble(inner, Specials { bos, eos, add_bos, add_eos, stop_ids }, template)
    }

    /// Builds the tokenizer of a Hugging Face model folder: `tokenizer.json`, `tokenizer_config.json`
    /// (special tokens, chat template), `chat_template.jinja`, and the stop tokens of
    /// `generation_config.json` and `config.json`.
    pub fn from_folder(dir: &std::path::Path) -> Result<Self> {
        let (inner, specials, template) = hf::read(dir)?;
        Self::assemble(inner, specials, template.as_deref())
    }

    /// The tokenizer of a model path: a `.gguf` file or a model folder.
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        match path.is_dir() {
            true => Self::from_folder(path),
            false => Self::from_gguf(&GgufFile::open(path)?),
        }
    }

    fn assemble(inner: tokenizers::Tokenizer, specials: Specials, template: Option<&str>) -> Result<Self> {
        let Specials { bos, eos, add_bos, add_eos, mut stop_ids } = specials;
        stop_ids.dedup();
        let text = |tok: Option<u32>| tok.and_then(|t| inner.id_to_token(t)).unwrap_or_default();
        let chat = ChatTemplate::new(template, &text(bos), &text(eos))?;
        let (add_bos, add_eos) = (add_bos && bos.is_some(), add_eos && eos.is_some());
        let template_defaults = TemplateKwargs::new();
        let mut tokenizer = Self { inner, bos, add_bos, add_eos, eos, stop_ids, chat, template_defaults };
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
        self.encode_chat_with(messages, &TemplateKwargs::new())
    }

    /// [`Self::encode_chat`] with extra template variables, over the defaults.
    pub fn encode_chat_with(&self, messages: &[Message], kwargs: &TemplateKwargs) -> Result<(String, Vec<u32>)> {
        let mut all = self.template_defaults.clone();
        all.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        let text = self.chat.render(messages, true, &all)?;
        let mut ids = self.encode_plain(&text)?;
        if self.add_bos && ids.first() != self.bos.as_ref() {
            ids.insert(0, self.bos.unwrap_or_default());
        }
        Ok((text, ids))
    }

    /// The chat template text of a conversation, without tokenizing it.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.chat.render(messages, add_generation_prompt, &self.template_defaults)
    }

    /// Sets a template variable for every conversation (`enable_thinking` from `--think/--no-think`).
    pub fn set_template_default(&mut self, key: &str, value: serde_json::Value) {
        self.template_defaults.insert(key.to_string(), value);
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
