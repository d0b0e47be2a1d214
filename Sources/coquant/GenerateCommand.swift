import ArgumentParser
import CoQuantModel
import CoQuantTensor
import Foundation

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt (greedy by default; --temperature and --top-p to sample).")

    @Argument(help: "Model folder or GGUF file.")
    var model: String

    @Option(help: "The prompt text.")
    var prompt: String

    @Option(help: "Most new tokens to generate.")
    var maxTokens = 128

    @Option(help: "Sampling temperature; 0 means greedy.")
    var temperature = 0.0

    @Option(help: "Nucleus sampling: keep the smallest set of tokens whose probability reaches P.")
    var topP = 1.0

    @Option(help: "Seed of the sampler.")
    var seed: UInt64 = 0

    @Flag(help: "Wrap the prompt in the ChatML template (<|im_start|>user … <|im_start|>assistant), as SmolLM2 and Qwen2 instruct models expect.")
    var chat = false

    @OptionGroup var output: OutputOptions
    @OptionGroup var execution: ExecutionOptions

    struct Result: Codable {
        let prompt: String
        let promptTokens: Int
        let generatedTokens: Int
        let ids: [Int]
        let text: String
        let tokensPerSecond: Double
    }

    func validate() throws {
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
        if !(temperature >= 0 && temperature.isFinite) { throw ValidationError("--temperature \(temperature) must be finite and ≥ 0") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
    }

    func run() throws {
        let loaded = try loadModel(model, quiet: output.quiet, simulate: execution.simulate, dynamicInt8: execution.dynamicInt8)
        let tokenizer = loaded.tokenizer!
        let text = chat ? "<|im_start|>user\n\(prompt)<|im_end|>\n<|im_start|>assistant\n" : prompt
        if chat && tokenizer.encode("<|im_start|>", addSpecialTokens: false).count != 1 {
            throw RunError("--chat: this tokenizer has no <|im_start|> token (not a ChatML model)")
        }
        let ids = tokenizer.encode(text)
        guard ids.count + maxTokens <= loaded.model.config.maxPositionEmbeddings else {
            throw RunError("prompt (\(ids.count) tokens) + --max-tokens exceeds the context (\(loaded.model.config.maxPositionEmbeddings))")
        }
        var printed = ""
        var out: [Int] = []
        let start = ContinuousClock.now
        let stream = !output.json
        out = CoQuantModel.generate(model: loaded.model, prompt: ids, maxTokens: maxTokens,
                                    sampling: SamplingOptions(temperature: temperature, topP: topP, seed: seed),
                                    stopIds: Set(tokenizer.eosTokenIds)) { id in
            out.append(id)
            if stream {
                // Decode everything so far and print the new suffix: multi-byte characters span tokens.
                let now = tokenizer.decode(out, skipSpecialTokens: true)
                if now.hasPrefix(printed) && !now.hasSuffix("\u{FFFD}") {
                    print(now.dropFirst(printed.count), terminator: "")
                    fflush(stdout)
                    printed = now
                }
            }
            return true
        }
        let secs = seconds(since: start)
        let result = Result(prompt: prompt, promptTokens: ids.count, generatedTokens: out.count, ids: out,
                            text: tokenizer.decode(out, skipSpecialTokens: true), tokensPerSecond: Double(out.count) / secs)
        if output.json {
            try printJSON(result)
        } else {
            if result.text.count > printed.count { print(result.text.dropFirst(printed.count), terminator: "") }
            print()
            print(String(format: "generated: %d tokens (prompt %d) at %.1f tok/s", out.count, ids.count, result.tokensPerSecond))
        }
    }
}
