//! `mlstack infer ...`: the inference engine from the command line.

use std::io::Write;

use ::infer::generate::{Engine, Request};
use ::infer::sampling::SamplingParams;
use ::infer::tokenizer::ChatMessage;

use crate::Error;
use crate::cli::{InferCommand, InferGenerateArgs, InferModelArgs};

/// Loads the engine the flags name and sizes the kernel thread pool.
pub fn load(args: &InferModelArgs) -> Result<Engine, Error> {
    if let Some(n) = args.threads {
        // The global pool can be sized once per process; a second call (tests
        // running several commands in one process) keeps the first size.
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            tracing::debug!(error = %e, "kernel thread pool already sized");
        }
    }
    let path = ::infer::locate_model(args.model.as_deref()).map_err(Error::Infer)?;
    tracing::info!(model = %path.display(), threads = rayon::current_num_threads(), "loading model");
    Ok(Engine::load(&path)?)
}

pub fn run(cmd: &InferCommand) -> Result<(), Error> {
    match cmd {
        InferCommand::Generate(a) => generate(a),
        InferCommand::BenchEngine(a) => {
            let engine = load(&a.model)?;
            let report = ::infer::bench::run(
                &engine,
                &::infer::bench::BenchConfig {
                    systems: a.systems.clone(),
                    decode_tokens: a.decode_tokens,
                    repeats: a.repeats.max(1),
                    threads: rayon::current_num_threads(),
                    model_path: ::infer::locate_model(a.model.model.as_deref())
                        .map_err(Error::Infer)?,
                },
            )
            .map_err(|e| Error::Bench(e.to_string()))?;
            print!("{}", report.table());
            if let Some(dir) = a.out.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Bench(format!("{}: {e}", dir.display())))?;
            }
            std::fs::write(&a.out, report.json())
                .map_err(|e| Error::Bench(format!("{}: {e}", a.out.display())))?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
    }
}

fn generate(a: &InferGenerateArgs) -> Result<(), Error> {
    let engine = load(&a.model)?;
    let tok = &engine.tokenizer;
    let prompt = if a.chat {
        let mut messages = Vec::new();
        if let Some(system) = &a.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        });
        let text = tok
            .apply_chat_template(&messages, true)
            .map_err(::infer::generate::GenerateError::from)?;
        // The template's own markers are special tokens; the user's text was
        // inserted into it, which is how chat templates work everywhere.
        tok.encode(&text, true)
            .map_err(::infer::generate::GenerateError::from)?
    } else {
        tok.encode(&a.prompt, false)
            .map_err(::infer::generate::GenerateError::from)?
    };
    let req = Request {
        prompt,
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            seed: a.seed,
            ..SamplingParams::default()
        },
        stop: a.stop.clone(),
        ignore_eos: false,
    };
    let mut stdout = std::io::stdout().lock();
    let out = engine.generate(&req, |text| {
        // A closed stdout (piped into `head`) must not abort generation with a
        // panic; the error surfaces as a short write and is ignored here.
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    eprintln!(
        "[{} prompt tokens: prefill {:.1} tokens/s | {} generated: decode {:.1} tokens/s | finish: {:?} | {} threads]",
        out.prompt_tokens,
        out.prefill_tokens_per_sec(),
        out.tokens.len(),
        out.decode_tokens_per_sec(),
        out.finish,
        rayon::current_num_threads()
    );
    Ok(())
}
