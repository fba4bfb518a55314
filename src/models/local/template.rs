//! Chat templates: the Jinja template a model was trained with (GGUF `tokenizer.chat_template`, or a file the
//! config names), rendered with minijinja and Python-compatible string methods, as Hugging Face renders it.

use minijinja::{Environment, ErrorKind, context};

use sdg_operators::model::ChatMessage;

use super::LocalError;

/// ChatML, for models that ship no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + \
                      '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's turn format (the system message joins the first user turn), for Gemma GGUFs without a template.
const GEMMA: &str = "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}\
                     {% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}\
                     {% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) \
                     + '\\n' + ns.system + message['content'] | trim + '<end_of_turn>\\n' }}{% set ns.system = '' %}\
                     {% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where the template came from, for errors and provenance.
    pub source: String,
}

impl ChatTemplate {
    /// `template` from the config or GGUF; else a default by vocabulary (Gemma turns, otherwise ChatML).
    pub fn new(
        template: Option<(String, String)>,
        has_gemma_turns: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, LocalError> {
        let (source, text) = template.unwrap_or_else(|| {
            if has_gemma_turns {
                ("built-in Gemma turns".into(), GEMMA.into())
            } else {
                ("built-in ChatML".into(), CHATML.into())
            }
        });
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| -> String {
            // Templates use it to print today's date; a fixed date keeps prompts (and the cache) stable.
            format.replace("%Y", "2026").replace("%m", "01").replace("%d", "01").replace("%B", "January")
        });
        env.add_template_owned("chat", text)
            .map_err(|e| LocalError::Template(format!("cannot compile the chat template ({source}): {e}")))?;
        Ok(ChatTemplate { env, bos_token: bos_token.into(), eos_token: eos_token.into(), source })
    }

    /// The prompt text for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, LocalError> {
        let template = self.env.get_template("chat").map_err(|e| LocalError::Template(e.to_string()))?;
        let messages: Vec<_> =
            messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect();
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| LocalError::Template(format!("chat template ({}): {e}", self.source)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages() -> Vec<ChatMessage> {
        vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi ")]
    }

    #[test]
    fn chatml_default_renders_turns_and_generation_prompt() {
        let template = ChatTemplate::new(None, false, "", "").unwrap();
        assert_eq!(
            template.render(&messages()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi <|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_default_folds_the_system_message_into_the_first_turn() {
        let template = ChatTemplate::new(None, true, "<bos>", "<eos>").unwrap();
        assert_eq!(
            template.render(&messages()).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let text = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}\
                    {{ messages[1]['content'].strip().upper() }}";
        let template = ChatTemplate::new(Some(("test".into(), text.into())), false, "", "").unwrap();
        assert_eq!(template.render(&messages()).unwrap(), "HI");
        let error = template.render(&[ChatMessage::new("user", "x")]).unwrap_err().to_string();
        assert!(error.contains("system first"), "{error}");
    }
}
