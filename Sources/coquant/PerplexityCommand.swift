import ArgumentParser
import CoQuantEval
import CoQuantModel
import Foundation

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ppl",
        abstract: "WikiText-2 test perplexity with the GPTQ/QuaRot protocol.",
        discussion: """
        The protocol the W4A4 papers report: the test split joined with "\\n\\n" is tokenized once (BOS only where the
        tokenizer adds one, at the very start), cut into non-overlapping windows of --seqlen tokens (the tail is
        dropped), each window is scored on all its next-token predictions, and PPL = exp(mean of window NLLs).
        Numbers are not comparable with llama.cpp's (n_ctx 512, second half of each chunk) or lm-eval's word
        perplexity. The ± is the standard error over windows.
        """)

    @Argument(help: "Model folder or GGUF file.")
    var model: String

    @Option(help: "Evaluate only the first N windows (default: all).")
    var windows: Int?

    @Option(help: "Tokens per window.")
    var seqlen = 2048

    @Option(help: "Text file to score instead of WikiText-2 test (UTF-8; scored the same way).")
    var text: String?

    @Option(help: "Folder holding wikitext-2-raw-v1/ (default: ./data or the repository's data/).")
    var data: String?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        if let windows, windows < 1 { throw ValidationError("--windows must be at least 1") }
        if seqlen < 2 { throw ValidationError("--seqlen must be at least 2") }
    }

    func run() throws {
        let loaded = try loadModel(model, quiet: output.quiet)
        let c = loaded.model.config
        if seqlen > c.maxPositionEmbeddings {
            throw RunError("--seqlen \(seqlen) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        let path = try text ?? locateData(data, "wikitext-2-raw-v1/test.gptq_join.txt")
        guard let raw = FileManager.default.contents(atPath: path), let string = String(data: raw, encoding: .utf8) else {
            throw RunError("\(path): cannot read as UTF-8 text")
        }
        let ids = loaded.tokenizer!.encode(string)
        if !output.quiet { printErr("\(path): \(ids.count) tokens, \(ids.count / seqlen) windows of \(seqlen)") }
        let progress = Progress(enabled: output.showProgress, label: "window", logEvery: output.quiet ? nil : Eval.progressLogInterval)
        let result = try CoQuantEval.perplexity(model: loaded.model, ids: ids, seqlen: seqlen, windows: windows) { done, total, s in
            progress.update(done, total, seconds: s, unit: "tok", perStep: Double(seqlen))
        }
        if output.json {
            try printJSON(result)
            printErr(result.summary)
        } else {
            print(String(format: "tokens: %d, %.1f tok/s", result.totalTokens, result.tokensPerSecond))
            print(result.summary)
        }
    }
}
