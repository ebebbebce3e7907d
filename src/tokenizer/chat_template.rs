//! Chat templates rendered the way Hugging Face renders them (Jinja with `trim_blocks` and
//! `lstrip_blocks`, `raise_exception`, Python string methods, loop controls), so that a model sees
//! byte for byte the text it was trained on. Models without a template get ChatML.

use crate::error::{Error, Result};
use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

/// One message of a conversation, in OpenAI's `messages` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Extra variables for a chat template (OpenAI servers' `chat_template_kwargs`).
pub type TemplateKwargs = serde_json::Map<String, serde_json::Value>;

/// ChatML, the fallback for models that carry no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether this is the model's own template (false: the ChatML fallback).
    pub from_model: bool,
}

impl ChatTemplate {
    /// Compiles `source` (or ChatML when `None`).
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |format: String| chrono::Local::now().format(&format).to_string());
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            from_model: source.is_some(),
        })
    }

    /// Renders the conversation, ending with the assistant's turn opener when `add_generation_prompt`.
    /// `kwargs` are extra template variables (`enable_thinking`), as transformers'
    /// `apply_chat_template(**kwargs)` passes them.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, kwargs: &TemplateKwargs) -> Result<String> {
        let template = self.env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                ..minijinja::Value::from_serialize(kwargs)
            })
            .map_err(|e| Error::ChatTemplate(describe(&e)))
    }
}

/// The template's own message for `raise_exception`, else minijinja's description.
fn describe(e: &minijinja::Error) -> String {
    match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("the template refused the conversation").to_string(),
        _ => e.to_string(),
    }
}
