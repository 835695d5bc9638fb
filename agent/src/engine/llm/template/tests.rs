use super::*;

/// The chat template of Meta-Llama-3-8B-Instruct / 70B-Instruct.
pub(crate) const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// ChatML, as OpenHermes 2.5 and Dolphin ship it.
pub(crate) const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The chat template of Mixtral-8x7B-Instruct-v0.1.
const MIXTRAL_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage {
        role: role.to_owned(),
        content: content.to_owned(),
    }
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        msg("system", "  You are a helpful assistant.\n"),
        msg("user", "What is 2+2?"),
        msg("assistant", "4"),
        msg("user", "And 3+3? "),
    ]
}

fn tokens(bos: &str, eos: &str) -> SpecialTokens {
    SpecialTokens {
        bos_token: Some(bos.to_owned()),
        eos_token: Some(eos.to_owned()),
    }
}

fn compile(source: &str) -> ChatTemplate {
    ChatTemplate::new(source, "/models/test/tokenizer_config.json").expect("template compiles")
}

#[test]
fn llama3_template_renders_the_official_layout() {
    let template = compile(LLAMA3_TEMPLATE);
    let special = tokens("<|begin_of_text|>", "<|eot_id|>");
    let text = template
        .render(&conversation(), &special, true)
        .expect("renders");
    let want = "<|begin_of_text|>\
            <|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>\
            <|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>\
            <|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(text, want);
    let without = template
        .render(&conversation(), &special, false)
        .expect("renders");
    assert_eq!(
        without,
        want.strip_suffix("<|start_header_id|>assistant<|end_header_id|>\n\n")
            .expect("suffix")
    );
}

#[test]
fn chatml_template_renders_the_official_layout() {
    let template = compile(CHATML_TEMPLATE);
    let text = template
        .render(&conversation(), &tokens("<s>", "<|im_end|>"), true)
        .expect("renders");
    let want = "<|im_start|>system\n  You are a helpful assistant.\n<|im_end|>\n\
            <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
            <|im_start|>assistant\n4<|im_end|>\n\
            <|im_start|>user\nAnd 3+3? <|im_end|>\n\
            <|im_start|>assistant\n";
    assert_eq!(text, want);
}

#[test]
fn raise_exception_fails_the_render_with_its_message() {
    let template = compile(MIXTRAL_TEMPLATE);
    let special = tokens("<s>", "</s>");
    let ok = template
        .render(
            &[
                msg("user", "Hi"),
                msg("assistant", "Hello"),
                msg("user", "Bye"),
            ],
            &special,
            true,
        )
        .expect("alternating roles render");
    assert_eq!(ok, "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]");

    let err = template
        .render(&conversation(), &special, true)
        .expect_err("a system message is refused");
    let text = err.to_string();
    assert!(
        text.contains("Conversation roles must alternate user/assistant/user/assistant/..."),
        "{text}"
    );
    assert!(
        text.starts_with("the chat template in /models/test/tokenizer_config.json failed:"),
        "{text}"
    );
}

#[test]
fn llama31_style_constructs_render_like_jinja2() {
    // The constructs of the Llama 3.1/3.2 templates: `-` whitespace control,
    // `is defined`, `strftime_now is defined`, slicing, `in` on a message, `tools is not
    // none` (tools is passed as None), `~`, loop controls. Expected text from jinja2 3.1
    // with the transformers environment.
    let template = compile(
        r#"{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "[SYS " + date_string + "]" + system_message }}
{%- if tools is not none %}{{ raise_exception("tools given") }}{% endif %}
{%- for message in messages %}
    {%- if loop.index0 > 2 %}{% break %}{% endif %}
    {%- if 'tool_calls' in message %}
        {{- raise_exception("no tool calls") }}
    {%- elif message.role == 'user' %}
        {{- '\n<U>' + message.content|trim -}}
    {%- else %}
        {{- '\n<A>' ~ message['content'] ~ eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '\n<A>' }}
{%- endif %}
"#,
    );
    let conversation = [
        msg("system", "  Be brief.\n"),
        msg("user", " Hi "),
        msg("assistant", "Hello"),
        msg("user", "Bye"),
        msg("assistant", "never shown"),
    ];
    let now = UNIX_EPOCH + std::time::Duration::from_secs(1_722_000_000);
    let text = template
        .render_at(&conversation, &tokens("<s>", "</s>"), true, now)
        .expect("renders");
    assert_eq!(
        text,
        "<s>[SYS 26 Jul 2024]Be brief.\n<U>Hi\n<A>Hello</s>\n<U>Bye\n<A>"
    );
}

#[test]
fn python_string_methods_work() {
    let template = compile(
        "{% for m in messages %}{{ m['role'].title() }}: {{ m['content'].strip() }}|{{ m.content.upper().split()|join('_') }}\n{% endfor %}",
    );
    let text = template
        .render(
            &[msg("user", "  hello there  ")],
            &SpecialTokens::default(),
            false,
        )
        .expect("renders");
    assert_eq!(text, "User: hello there|HELLO_THERE\n");
}

#[test]
fn blocks_are_trimmed_like_transformers() {
    // trim_blocks drops the newline after a block tag; lstrip_blocks drops the
    // indentation before one; the template's single trailing newline is dropped.
    let template = compile(
        "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content }}\n    {% endif %}\n{% endfor %}\n",
    );
    let text = template
        .render(
            &[msg("user", "a"), msg("user", "b")],
            &SpecialTokens::default(),
            false,
        )
        .expect("renders");
    assert_eq!(text, "U:a\nU:b\n");
}

#[test]
fn missing_special_tokens_print_as_nothing() {
    let template = compile("[{{ bos_token }}]{{ messages[0].content }}[{{ eos_token }}]");
    let text = template
        .render(&[msg("user", "x")], &SpecialTokens::default(), false)
        .expect("renders");
    assert_eq!(text, "[]x[]");
}

#[test]
fn tojson_matches_python_json_dumps() {
    let template = compile(
        "{{ messages[0] | tojson }}|{{ [1, 2.5, 1e20, 0.0001, none, true, 'é\"<'] | tojson }}|{{ {'b': 1, 'a': [1]} | tojson(indent=2, sort_keys=true) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
    );
    let text = template
        .render(
            &[msg("user", "hi <there>")],
            &SpecialTokens::default(),
            false,
        )
        .expect("renders");
    assert_eq!(
        text,
        "{\"role\": \"user\", \"content\": \"hi <there>\"}|\
             [1, 2.5, 1e+20, 0.0001, null, true, \"é\\\"<\"]|\
             {\n  \"a\": [\n    1\n  ],\n  \"b\": 1\n}|\"\\u00e9\""
    );
}

#[test]
fn python_float_repr_matches_python() {
    for (f, want) in [
        (1.0, "1.0"),
        (2.5, "2.5"),
        (-0.5, "-0.5"),
        (1e16, "1e+16"),
        (1234567890123456.0, "1234567890123456.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (0.1, "0.1"),
        (123.456, "123.456"),
    ] {
        assert_eq!(python_float_repr(f), want, "{f}");
    }
}

#[test]
fn strftime_now_formats_the_pinned_clock() {
    let template =
        compile("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A %B %-d, %H:%M:%S %j %%') }}");
    // 2024-07-26T13:05:09Z, a Friday, day 208 of a leap year.
    let now = UNIX_EPOCH
        + std::time::Duration::from_secs(
            1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9,
        );
    let text = template
        .render_at(&[], &SpecialTokens::default(), false, now)
        .expect("renders");
    assert_eq!(text, "26 Jul 2024|Friday July 26, 13:05:09 208 %");
}

#[test]
fn civil_dates_round_trip() {
    for days in [-800_000, -1, 0, 1, 59, 60, 365, 10_957, 19_930, 2_932_896] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_783), (2024, 3, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
}

#[test]
fn syntax_errors_name_the_file() {
    let err = ChatTemplate::new("{% for m in messages %}", "/m/tokenizer_config.json")
        .expect_err("unclosed block");
    let text = err.to_string();
    assert!(
        text.starts_with("the chat template in /m/tokenizer_config.json does not compile:"),
        "{text}"
    );
}
