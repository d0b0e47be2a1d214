import ArgumentParser

@main
struct CoQuant: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coquant",
        abstract: "Quantize Llama- and Qwen2-family models after training, and measure what it cost.",
        discussion: """
        MODEL is a Hugging Face folder (config.json, tokenizer.json, model.safetensors or shards + index) or a
        GGUF file. Weights are dequantized to fp32 on load.

        Examples:
          coquant inspect models/SmolLM2-135M-Instruct.Q4_1.gguf
          coquant ppl models/SmolLM2-135M-Instruct.Q4_1.gguf --windows 16
          coquant generate models/SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt "What is 2+2?"
        """,
        subcommands: [Quantize.self, Export.self, Perplexity.self, Eval.self, Report.self, Generate.self, Bench.self, Inspect.self])
}
