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

    @Option(help: ArgumentHelp("Checkpoint file: each scored window's NLL is appended to it, and a run given an existing one continues after its windows (the settings must match). Removed when the run finishes.", valueName: "file"))
    var checkpoint: String?

    @OptionGroup var output: OutputOptions
    @OptionGroup var execution: ExecutionOptions

    func validate() throws {
        if let windows, windows < 1 { throw ValidationError("--windows must be at least 1") }
        if seqlen < 2 { throw ValidationError("--seqlen must be at least 2") }
        if let checkpoint { try checkCreatable(checkpoint, flag: "--checkpoint") }
    }

    func run() throws {
        let loaded = try loadModel(model, quiet: output.quiet, simulate: execution.simulate, dynamicInt8: execution.dynamicInt8)
        let c = loaded.model.config
        if seqlen > c.maxPositionEmbeddings {
            throw RunError("--seqlen \(seqlen) is longer than the model's context (\(c.maxPositionEmbeddings))")
        }
        let path = try text ?? locateData(data, "wikitext-2-raw-v1/test.gptq_join.txt")
        let ids = loaded.tokenizer!.encode(try readTextFile(path))
        // perplexity() checks this too, but only after the checkpoint below is written, and without the file's name.
        guard ids.count >= seqlen else {
            throw RunError("\(path): \(ids.count) tokens, fewer than one window of --seqlen \(seqlen)")
        }
        if !output.quiet { printErr("\(path): \(ids.count) tokens, \(ids.count / seqlen) windows of \(seqlen)") }
        // A full-test run is half an hour on two cores: with --checkpoint an interrupted one loses one window at most.
        let header = "# coquant ppl: model \(model), text \(path), \(ids.count) tokens, seqlen \(seqlen)"
        var done: [Double] = []
        var log: FileHandle?
        if let checkpoint {
            done = try readPerplexityCheckpoint(checkpoint, header: header)
            if done.isEmpty {
                do {
                    let parent = URL(fileURLWithPath: checkpoint).deletingLastPathComponent().path
                    try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
                    try (header + "\n").write(toFile: checkpoint, atomically: true, encoding: .utf8)
                } catch {
                    throw RunError("\(checkpoint): cannot write the checkpoint: \(error.failureReason)")
                }
            }
            guard let handle = FileHandle(forWritingAtPath: checkpoint) else { throw RunError("\(checkpoint): cannot open for appending") }
            handle.seekToEndOfFile()
            log = handle
            if !output.quiet && !done.isEmpty { printErr("\(checkpoint): continuing after \(done.count) scored window(s)") }
        }
        let progress = output.progress("window", resumedAt: done.count)
        let result = try CoQuantEval.perplexity(model: loaded.model, ids: ids, seqlen: seqlen, windows: windows, done: done,
                                                progress: { done, total, s in
            progress.update(done, total, seconds: s, unit: "tok", perStep: Double(seqlen))
        }, onWindow: { w, nll in
            log?.write(String(format: "%d %.17g\n", w, nll).data(using: .utf8)!)
        })
        if let checkpoint { try? log?.close(); try? FileManager.default.removeItem(atPath: checkpoint) }
        if output.json {
            try printJSON(result)
            printErr(result.summary)
        } else {
            print(String(format: "tokens: %d, %.1f tok/s", result.totalTokens, result.tokensPerSecond))
            print(result.summary)
        }
    }
}

/// The window NLLs of a `ppl --checkpoint` file: its header line must match this run's settings; then "index nll"
/// lines in window order. A torn last line (the run was killed while writing it) is dropped and that window rescored.
func readPerplexityCheckpoint(_ path: String, header: String) throws -> [Double] {
    guard let data = FileManager.default.contents(atPath: path) else { return [] }
    guard let text = String(data: data, encoding: .utf8) else { throw RunError("\(path): not a ppl checkpoint (not UTF-8)") }
    var lines = text.components(separatedBy: "\n")
    if text.hasSuffix("\n") { lines.removeLast() } else if lines.count > 1 { lines.removeLast() }   // torn line
    guard let first = lines.first, first == header else {
        throw RunError("\(path): checkpoint of another run (\(lines.first ?? "empty")); this run is \(header.dropFirst(2)) — remove the file or pass another --checkpoint")
    }
    var nlls: [Double] = []
    for (i, line) in lines.dropFirst().enumerated() {
        let parts = line.split(separator: " ")
        guard parts.count == 2, Int(parts[0]) == nlls.count, let nll = Double(parts[1]), nll.isFinite else {
            throw RunError("\(path):\(i + 2): expected \"\(nlls.count) <nll>\", found \"\(line)\"")
        }
        nlls.append(nll)
    }
    return nlls
}
