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
    var prompt: String?

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

    @Option(help: "The prompt as token ids (comma- or space-separated) instead of --prompt: both sides of a comparison see the same tokens.")
    var promptIds: String?

    @Option(help: "With --json: the K most likely tokens and their log-probabilities at every generated position (llama.cpp's n_probs, OpenAI's top_logprobs).")
    var topLogprobs = 0

    @OptionGroup var output: OutputOptions
    @OptionGroup var execution: ExecutionOptions

    struct Candidate: Codable { let id: Int; let logprob: Double }
    struct Result: Codable {
        let prompt: String
        let promptTokens: Int
        let promptIds: [Int]
        let generatedTokens: Int
        let ids: [Int]
        let text: String
        let tokensPerSecond: Double
        /// Per generated position, the top --top-logprobs candidates (absent without it).
        let topLogprobs: [[Candidate]]?
    }

    func validate() throws {
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
        if !(temperature >= 0 && temperature.isFinite) { throw ValidationError("--temperature \(temperature) must be finite and ≥ 0") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
        if topLogprobs < 0 { throw ValidationError("--top-logprobs must be ≥ 0") }
        if topLogprobs > 0 && !output.json { throw ValidationError("--top-logprobs prints with --json") }
        if let p = promptIds, (try? parseIds(p)) == nil { throw ValidationError("--prompt-ids \"\(p)\": expected token ids separated by commas or spaces") }
        if (prompt == nil) == (promptIds == nil) { throw ValidationError("give the prompt as --prompt TEXT or as --prompt-ids IDS (one of them)") }
        if promptIds != nil && chat { throw ValidationError("--prompt-ids are the exact tokens: drop --chat") }
    }

    func run() throws {
        let loaded = try loadModel(model, quiet: output.quiet, simulate: execution.simulate, dynamicInt8: execution.dynamicInt8)
        let tokenizer = loaded.tokenizer!
        let text = chat ? "<|im_start|>user\n\(prompt ?? "")<|im_end|>\n<|im_start|>assistant\n" : prompt ?? ""
        if chat && tokenizer.encode("<|im_start|>", addSpecialTokens: false).count != 1 {
            throw RunError("--chat: this tokenizer has no <|im_start|> token (not a ChatML model)")
        }
        let ids = try promptIds.map(parseIds) ?? tokenizer.encode(text)
        if let bad = ids.first(where: { $0 < 0 || $0 >= loaded.model.config.vocabSize }) {
            throw RunError("--prompt-ids: \(bad) is not a token id of this model (vocabulary \(loaded.model.config.vocabSize))")
        }
        guard ids.count + maxTokens <= loaded.model.config.maxPositionEmbeddings else {
            throw RunError("prompt (\(ids.count) tokens) + --max-tokens exceeds the context (\(loaded.model.config.maxPositionEmbeddings))")
        }
        var printed = ""
        var out: [Int] = []
        var top: [[Candidate]] = []
        let start = ContinuousClock.now
        let stream = !output.json
        out = CoQuantModel.generate(model: loaded.model, prompt: ids, maxTokens: maxTokens,
                                    sampling: SamplingOptions(temperature: temperature, topP: topP, seed: seed),
                                    stopIds: Set(tokenizer.eosTokenIds), onLogits: { logits in
            if topLogprobs > 0 { top.append(Self.topCandidates(logits, topLogprobs)) }
        }) { id in
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
        let result = Result(prompt: prompt ?? tokenizer.decode(ids), promptTokens: ids.count, promptIds: ids, generatedTokens: out.count, ids: out,
                            text: tokenizer.decode(out, skipSpecialTokens: true), tokensPerSecond: Double(out.count) / secs,
                            topLogprobs: topLogprobs > 0 ? top : nil)
        if output.json {
            try printJSON(result)
        } else {
            if result.text.count > printed.count { print(result.text.dropFirst(printed.count), terminator: "") }
            print()
            print(String(format: "generated: %d tokens (prompt %d) at %.1f tok/s", out.count, ids.count, result.tokensPerSecond))
        }
    }

    /// The k largest log-softmax entries of `logits`, most likely first (computed in Double).
    static func topCandidates(_ logits: [Float], _ k: Int) -> [Candidate] {
        let mx = Double(logits.max() ?? 0)
        let lse = mx + log(logits.reduce(0.0) { $0 + exp(Double($1) - mx) })
        let order = logits.indices.sorted { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        return order.prefix(k).map { Candidate(id: $0, logprob: Double(logits[$0]) - lse) }
    }
}

/// "1, 2 3" → [1, 2, 3].
func parseIds(_ s: String) throws -> [Int] {
    let parts = s.split(whereSeparator: { $0 == "," || $0 == " " })
    let ids = parts.compactMap { Int($0) }
    guard !ids.isEmpty, ids.count == parts.count else { throw ValidationError("bad token ids") }
    return ids
}
