import Foundation
import XCTest

// End-to-end tests of the `coquant` executable: each test runs the built binary as a subprocess, the way a user
// does, on the tiny fixture models, and checks its exit status, what it prints and what it leaves on disk.
// This target links none of the CoQuant modules on purpose: what is tested is the command line, not the library.

/// `Tests/Fixtures` and the package root, found from this file's path as the other test targets do.
let fixturesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures").path
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

/// What one run of the tool did.
struct CommandResult {
    let arguments: [String]
    let status: Int32
    /// False when the process was killed by a signal (a crash: trap, fatalError, segfault).
    let exitedNormally: Bool
    let stdout: String
    let stderr: String

    var stderrLines: [String] { stderr.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }

    var transcript: String {
        "coquant \(arguments.joined(separator: " "))\nexit status \(status)\(exitedNormally ? "" : " (killed by a signal)")\n"
            + "--- stdout ---\n\(stdout)\n--- stderr ---\n\(stderr)"
    }
}

struct MissingExecutable: Error, CustomStringConvertible {
    let description: String
}

final class CLITests: XCTestCase {
    // MARK: Running the tool

    /// SwiftPM puts the `coquant` executable next to the test bundle, in the build products folder.
    static func productsDirectory() -> URL {
        #if os(macOS)
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            return bundle.bundleURL.deletingLastPathComponent()
        }
        return Bundle.main.bundleURL.deletingLastPathComponent()
        #else
        // On Linux the test bundle is itself an executable in the products folder, so Bundle.main is that folder.
        return Bundle.main.bundleURL
        #endif
    }

    static func executable() throws -> String {
        let path = productsDirectory().appendingPathComponent("coquant").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw MissingExecutable(description: "the coquant executable is missing at \(path): build it first with "
                                    + "`swift build --build-tests` (scripts/test.sh does), then run `swift test --skip-build`")
        }
        return path
    }

    /// A fresh empty folder for one test, removed when the test ends.
    var workDir: String!

    override func setUpWithError() throws {
        let name = "coquant-cli-tests-\(getpid())-\(UUID().uuidString.prefix(8))"
        workDir = FileManager.default.temporaryDirectory.appendingPathComponent(name).path
        try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let workDir { try? FileManager.default.removeItem(atPath: workDir) }
    }

    func path(_ relative: String) -> String { workDir + "/" + relative }

    /// Runs `coquant ARGS` in the test's work folder, without a terminal (so no progress display) and without
    /// `COQUANT_DATA` (so data is found the way it is documented: --data, ./data, or next to the build folder).
    @discardableResult
    func coquant(_ arguments: [String]) throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.executable())
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: workDir)
        var environment = ProcessInfo.processInfo.environment
        environment["COQUANT_DATA"] = nil
        process.environment = environment
        // Output goes to files, not pipes: a pipe that fills up while we wait would block the child.
        let outPath = workDir + "/.stdout-\(UUID().uuidString)", errPath = workDir + "/.stderr-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }
        let outHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let errHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        process.standardOutput = outHandle
        process.standardError = errHandle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try outHandle.close()
        try errHandle.close()
        return CommandResult(arguments: arguments, status: process.terminationStatus,
                             exitedNormally: process.terminationReason == .exit,
                             stdout: String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self),
                             stderr: String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self))
    }

    /// Asserts a successful run (status 0, no crash) and shows the whole transcript when it is not.
    func assertSucceeded(_ r: CommandResult, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(r.exitedNormally && r.status == 0, "expected success:\n\(r.transcript)", file: file, line: line)
    }

    /// Asserts a clean refusal: a non-zero status from an ordinary exit (not a crash), nothing on stdout, and on
    /// stderr exactly one `Error: …` line that mentions every one of `words` (the file or option, and the problem).
    ///
    /// `usage` says what may follow it. A bad option value (`usage: "quantize"`) is caught before any work, so the
    /// error is the first line, followed only by ArgumentParser's two-line pointer to that subcommand's usage
    /// (`Usage: coquant quantize …`, `  See 'coquant quantize --help' …`). A problem found while running
    /// (`usage: nil`: a missing file, a model the options do not fit) may follow the command's progress lines but
    /// must end stderr: no usage at all, and never the root command's `Usage: coquant <subcommand>`, which would
    /// say the command line could not be parsed.
    func assertRefused(_ r: CommandResult, mentioning words: [String], usage: String?,
                       file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(r.exitedNormally, "crashed instead of refusing:\n\(r.transcript)", file: file, line: line)
        XCTAssertNotEqual(r.status, 0, "exit status 0 on bad input:\n\(r.transcript)", file: file, line: line)
        XCTAssertEqual(r.stdout, "", "printed on stdout while refusing:\n\(r.transcript)", file: file, line: line)
        let lines = r.stderrLines
        let errors = lines.indices.filter { lines[$0].hasPrefix("Error: ") }
        XCTAssertEqual(errors.count, 1, "expected one 'Error: ' line on stderr:\n\(r.transcript)", file: file, line: line)
        guard let at = errors.first else { return }
        for w in words {
            XCTAssertTrue(lines[at].contains(w), "the error does not mention '\(w)':\n\(r.transcript)", file: file, line: line)
        }
        let after = Array(lines[(at + 1)...])
        if let verb = usage {
            XCTAssertEqual(at, 0, "an option error must be reported before any work:\n\(r.transcript)", file: file, line: line)
            XCTAssertEqual(after.count, 2, "expected the usage pointer after the error:\n\(r.transcript)", file: file, line: line)
            XCTAssertTrue(after.first?.hasPrefix("Usage: coquant \(verb) ") ?? false,
                          "not the \(verb) usage:\n\(r.transcript)", file: file, line: line)
            XCTAssertEqual(after.last, "  See 'coquant \(verb) --help' for more information.", file: file, line: line)
        } else {
            XCTAssertEqual(after, [], "stderr goes on after the error:\n\(r.transcript)", file: file, line: line)
            XCTAssertFalse(r.stderr.contains("Usage:"), "a run-time error printed a usage:\n\(r.transcript)", file: file, line: line)
        }
    }

    /// Asserts that `path` does not exist, nor the tool's scratch folders next to it (`PATH.partial`,
    /// `PATH.tmp-<pid>`): a refused run must leave nothing behind.
    func assertNothingWritten(at path: String, file: StaticString = #filePath, line: UInt = #line) {
        let fm = FileManager.default
        XCTAssertFalse(fm.fileExists(atPath: path), "\(path) was created", file: file, line: line)
        let folder = (path as NSString).deletingLastPathComponent, name = (path as NSString).lastPathComponent
        let leftovers = ((try? fm.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasPrefix(name + ".") }
        XCTAssertEqual(leftovers, [], "left behind next to \(path)", file: file, line: line)
    }

    // MARK: Fixtures

    /// `tiny-models/a_llama_gqa_tied` (4 layers, hidden 64, vocab 300) with a tokenizer added, in the work folder.
    func tinyModelWithTokenizer() throws -> String {
        let source = fixturesDir + "/tiny-models/a_llama_gqa_tied", folder = path("tiny-llama")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for name in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: source + "/" + name, toPath: folder + "/" + name)
        }
        // The tiny models have no tokenizer and every text command needs one: a byte-level BPE that fits their vocabulary.
        try FileManager.default.copyItem(atPath: fixturesDir + "/tiny-models/byte_level_tokenizer.json", toPath: folder + "/tokenizer.json")
        return folder
    }

    /// A few KB of English from the repository's WikiText-2 test text: enough windows for --seqlen 16.
    func smallTextFile(_ name: String) throws -> String {
        let source = packageRoot + "/data/wikitext-2-raw-v1/test.gptq_join.txt"
        let data = try XCTUnwrap(FileManager.default.contents(atPath: source), "\(source) is missing")
        let text = String(decoding: data.prefix(4000), as: UTF8.self)
        let file = path(name)
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    func jsonObject(_ file: String, file sourceFile: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: file), "\(file) is missing", file: sourceFile, line: line)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(file) is not a JSON object",
                             file: sourceFile, line: line)
    }

    /// The value N of a stdout line `perplexity: N ± …`.
    func printedPerplexity(_ r: CommandResult) -> Double? {
        for line in r.stdout.split(separator: "\n") where line.hasPrefix("perplexity: ") {
            return Double(line.dropFirst("perplexity: ".count).prefix { !$0.isWhitespace })
        }
        return nil
    }

    // MARK: Happy path

    func testExecutableIsBuilt() throws {
        let r = try coquant(["--help"])
        assertSucceeded(r)
        for verb in ["quantize", "ppl", "eval", "report", "generate", "inspect"] {
            XCTAssertTrue(r.stdout.contains(verb), "--help does not list \(verb):\n\(r.transcript)")
        }
    }

    func testInspectFixtureWithoutTokenizer() throws {
        let r = try coquant(["inspect", fixturesDir + "/tiny-models/a_llama_gqa_tied"])
        assertSucceeded(r)
        XCTAssertTrue(r.stdout.contains("architecture: llama, 4 layers, hidden 64, heads 8 / 2 KV"), r.transcript)
        XCTAssertTrue(r.stdout.contains("tokenizer: none"), r.transcript)
    }

    /// The tokenizer-less fixture is refused by the commands that need text, naming the folder and what is missing.
    func testTextCommandNeedsTokenizer() throws {
        let model = fixturesDir + "/tiny-models/a_llama_gqa_tied"
        assertRefused(try coquant(["ppl", model, "--seqlen", "16", "--windows", "1"]), mentioning: [model, "no tokenizer"], usage: nil)
    }

    /// quantize → ppl → eval (FP and quantized) → report, each step reading the previous one's output.
    func testQuantizeEvaluateAndReport() throws {
        let model = try tinyModelWithTokenizer()
        let calibration = try smallTextFile("calibration.txt")
        let quantized = path("gptq-w4")

        let q = try coquant(["quantize", model, "--method", "gptq", "--scheme", "W4A16", "--nsamples", "2", "--seqlen", "16",
                             "--calib-file", calibration, "--out", quantized])
        assertSucceeded(q)
        XCTAssertTrue(q.stdout.contains("quantized: 28 linears, W4A16"), "summary line:\n\(q.transcript)")
        let config = try jsonObject(quantized + "/config.json")
        let qc = try XCTUnwrap(config["quantization_config"] as? [String: Any], "config.json has no quantization_config")
        XCTAssertEqual(qc["quant_method"] as? String, "coquant")
        XCTAssertEqual(qc["method"] as? String, "gptq")
        XCTAssertEqual(qc["scheme"] as? String, "W4A16")
        XCTAssertEqual((qc["weights"] as? [String: Any])?["bits"] as? Int, 4)
        for name in ["model.safetensors", "tokenizer.json", "report.md"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: quantized + "/" + name), "\(name) missing from \(quantized)")
        }
        let report = try jsonObject(quantized + "/report.json")
        let linears = try XCTUnwrap(report["linears"] as? [[String: Any]])
        XCTAssertEqual(linears.count, 4 * 7, "one report per linear of the 4 layers")
        XCTAssertTrue(linears.allSatisfy { ($0["loss"] as? NSNumber).map { $0.doubleValue.isFinite && $0.doubleValue >= 0 } ?? false },
                      "every linear's loss is a finite number ≥ 0")
        assertNothingWritten(at: quantized + ".partial")

        let ppl = try coquant(["ppl", quantized, "--text", try smallTextFile("ppl.txt"), "--seqlen", "16", "--windows", "2"])
        assertSucceeded(ppl)
        let perplexity = try XCTUnwrap(printedPerplexity(ppl), "no 'perplexity: N' line:\n\(ppl.transcript)")
        XCTAssertTrue(perplexity.isFinite && perplexity > 1, "perplexity \(perplexity)")
        XCTAssertTrue(ppl.stdout.contains("(2 windows × 16 tokens)"), ppl.transcript)

        // The FP run finds the task data on its own (next to the build folder); the quantized run is given --data.
        let fpRun = path("runs/fp"), gptqRun = path("runs/gptq")
        assertSucceeded(try coquant(["eval", model, "--tasks", "piqa", "--limit", "3", "--out", fpRun]))
        assertSucceeded(try coquant(["eval", quantized, "--tasks", "piqa", "--limit", "3", "--data", packageRoot + "/data",
                                     "--out", gptqRun]))
        for (run, method) in [(fpRun, "fp"), (gptqRun, "gptq")] {
            let results = try jsonObject(run + "/results.json")
            XCTAssertEqual(results["method"] as? String, method, run)
            let tasks = try XCTUnwrap(results["tasks"] as? [[String: Any]], "\(run)/results.json has no tasks")
            XCTAssertEqual(tasks.map { $0["task"] as? String }, ["piqa"], run)
            XCTAssertEqual(tasks.first?["docs"] as? Int, 3, run)
            let accuracy = try XCTUnwrap(((tasks.first?["acc"]) as? [String: Any])?["value"] as? Double, "\(run): piqa acc")
            XCTAssertTrue((0...1).contains(accuracy), "\(run): piqa acc \(accuracy)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/samples/piqa.jsonl"), "\(run)/samples/piqa.jsonl")
        }
        XCTAssertEqual((try jsonObject(gptqRun + "/results.json")["layer_loss"] as? [Double])?.count, 4,
                       "the quantized run carries its Σ loss per layer from report.json")

        let comparison = path("compare")
        let r = try coquant(["report", fpRun + "/results.json", gptqRun + "/results.json", "--out", comparison])
        assertSucceeded(r)
        let markdown = try String(contentsOfFile: comparison + "/report.md", encoding: .utf8)
        for expected in ["| fp (3) | fp |", "| gptq (3) | gptq W4A16 | 4-16-16 |", "piqa", "average.svg", "layer_loss.svg"] {
            XCTAssertTrue(markdown.contains(expected), "report.md lacks '\(expected)':\n\(markdown)")
        }
        for chart in ["average.svg", "layer_loss.svg"] {
            let svg = try String(contentsOfFile: comparison + "/" + chart, encoding: .utf8)
            XCTAssertTrue(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.hasSuffix("</svg>\n"), "\(chart):\n\(svg)")
        }
        XCTAssertTrue(try String(contentsOfFile: comparison + "/average.svg", encoding: .utf8).contains(">gptq<"))

        // The quantized folder is complete enough to generate from (it carries the tokenizer).
        let g = try coquant(["generate", quantized, "--prompt", "The", "--max-tokens", "4"])
        assertSucceeded(g)
        XCTAssertTrue(g.stdout.contains("generated: 4 tokens"), g.transcript)
    }

    // MARK: Bad input

    /// `ppl --checkpoint`: an interrupted run (a checkpoint holding its first window and a torn line) continues to
    /// the uninterrupted run's numbers; a checkpoint of other settings is refused; a finished run removes it.
    func testPerplexityCheckpoint() throws {
        let model = try tinyModelWithTokenizer(), text = try smallTextFile("ppl.txt")
        let arguments = ["ppl", model, "--text", text, "--seqlen", "16", "--windows", "4", "--json"]
        let full = try coquant(arguments)
        assertSucceeded(full)
        let reference = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(full.stdout.utf8)) as? [String: Any])
        let nlls = try XCTUnwrap(reference["per_window_mean_nll"] as? [Double])
        XCTAssertEqual(nlls.count, 4)

        let checkpoint = path("ppl.checkpoint")
        let complete = try coquant(arguments + ["--checkpoint", checkpoint])
        assertSucceeded(complete)
        XCTAssertFalse(FileManager.default.fileExists(atPath: checkpoint), "a finished run removes its checkpoint")

        // What an interrupted run leaves: its header, the first window's line, and a line torn by the kill.
        let header = "# coquant ppl: model \(model), text \(text), \(try XCTUnwrap(reference["total_tokens"] as? Int)) tokens, seqlen 16"
        try (header + "\n" + String(format: "0 %.17g\n", nlls[0]) + "1 3.1").write(toFile: checkpoint, atomically: true, encoding: .utf8)
        let resumed = try coquant(arguments + ["--checkpoint", checkpoint])
        assertSucceeded(resumed)
        XCTAssertTrue(resumed.stderr.contains("continuing after 1 scored window"), resumed.transcript)
        let again = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(resumed.stdout.utf8)) as? [String: Any])
        // Window 0 went through JSON text twice, which may move its last bit; the others are recomputed.
        let resumedNLLs = try XCTUnwrap(again["per_window_mean_nll"] as? [Double])
        XCTAssertEqual(resumedNLLs.count, 4)
        for (a, b) in zip(resumedNLLs, nlls) { XCTAssertEqual(a, b, accuracy: 1e-14 * abs(b), "resumed windows equal the uninterrupted run's") }
        XCTAssertEqual(Array(resumedNLLs.dropFirst()), Array(nlls.dropFirst()))
        let ppl = try XCTUnwrap(reference["perplexity"] as? Double)
        XCTAssertEqual(try XCTUnwrap(again["perplexity"] as? Double), ppl, accuracy: 1e-12 * ppl)

        try "# coquant ppl: model other, text \(text), 1 tokens, seqlen 16\n0 1.5\n".write(toFile: checkpoint, atomically: true, encoding: .utf8)
        assertRefused(try coquant(arguments + ["--checkpoint", checkpoint]), mentioning: [checkpoint, "checkpoint of another run"], usage: nil)
        XCTAssertTrue(FileManager.default.fileExists(atPath: checkpoint), "a refused run leaves the checkpoint alone")
    }

    func testModelPathDoesNotExist() throws {
        let missing = path("no-such-model"), out = path("out")
        assertRefused(try coquant(["quantize", missing, "--method", "gptq", "--out", out]), mentioning: [missing, "no such file"], usage: nil)
        assertNothingWritten(at: out)
    }

    func testTextFileIsNotAModel() throws {
        let fake = path("notes.gguf"), out = path("out")
        try "these are notes, not weights\n".write(toFile: fake, atomically: true, encoding: .utf8)
        let r = try coquant(["quantize", fake, "--method", "gptq", "--out", out])
        assertRefused(r, mentioning: [fake, "not a GGUF file"], usage: nil)
        assertNothingWritten(at: out)
        // ppl reads the model the same way.
        assertRefused(try coquant(["ppl", fake]), mentioning: [fake, "not a GGUF file"], usage: nil)
    }

    func testUnknownMethod() throws {
        let model = try tinyModelWithTokenizer(), out = path("out")
        let r = try coquant(["quantize", model, "--method", "awq", "--out", out])
        assertRefused(r, mentioning: ["--method awq", "gptq", "coquant"], usage: "quantize")
        assertNothingWritten(at: out)
    }

    func testUnknownTask() throws {
        let model = try tinyModelWithTokenizer(), out = path("run")
        let r = try coquant(["eval", model, "--tasks", "piqa,hellaswagg", "--limit", "1", "--out", out])
        assertRefused(r, mentioning: ["hellaswagg", "piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq",
                                      "openbookqa", "lambada_openai", "social_iqa"], usage: "eval")
        assertNothingWritten(at: out)
    }

    func testExistingOutputIsKept() throws {
        let model = try tinyModelWithTokenizer(), out = path("existing")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try "keep me\n".write(toFile: out + "/mine.txt", atomically: true, encoding: .utf8)
        let r = try coquant(["quantize", model, "--method", "rtn", "--nsamples", "2", "--seqlen", "16",
                             "--calib-file", try smallTextFile("calibration.txt"), "--out", out])
        assertRefused(r, mentioning: [out, "already exists", "--overwrite"], usage: "quantize")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), ["mine.txt"], "the existing folder was changed")
        XCTAssertEqual(try String(contentsOfFile: out + "/mine.txt", encoding: .utf8), "keep me\n")
        assertNothingWritten(at: out + ".partial")

        // An interrupted run's checkpoint is kept unless --resume or --overwrite says what to do with it.
        let partial = path("interrupted.partial")
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        try "{}".write(toFile: partial + "/state.json", atomically: true, encoding: .utf8)
        let p = try coquant(["quantize", model, "--method", "rtn", "--nsamples", "2", "--seqlen", "16",
                             "--calib-file", try smallTextFile("calibration.txt"), "--out", path("interrupted")])
        assertRefused(p, mentioning: [partial, "interrupted run", "--resume", "--overwrite"], usage: "quantize")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: partial), ["state.json"])

        // eval and report refuse an existing --out the same way.
        let e = try coquant(["eval", model, "--tasks", "piqa", "--limit", "1", "--out", out])
        assertRefused(e, mentioning: [out, "already exists", "--overwrite"], usage: "eval")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out), ["mine.txt"])
    }

    func testHighFractionOutOfRange() throws {
        let model = try tinyModelWithTokenizer(), out = path("out")
        let r = try coquant(["quantize", model, "--method", "coquant", "--scheme", "W4A4KV4", "--high-fraction", "1.5",
                             "--nsamples", "2", "--seqlen", "16", "--calib-file", try smallTextFile("calibration.txt"),
                             "--out", out])
        assertRefused(r, mentioning: ["--high-fraction 1.5", "(0, 1)"], usage: "quantize")
        assertNothingWritten(at: out)
    }

    func testGroupSizeNotDividingTheDimension() throws {
        let model = try tinyModelWithTokenizer(), out = path("out")
        let r = try coquant(["quantize", model, "--method", "gptq", "--scheme", "W4A16g7", "--nsamples", "2", "--seqlen", "16",
                             "--calib-file", try smallTextFile("calibration.txt"), "--out", out])
        assertRefused(r, mentioning: ["--scheme W4A16g7", "group size 7", "hidden_size 64"], usage: nil)
        assertNothingWritten(at: out)

        let w = try coquant(["quantize", model, "--method", "rtn", "--w-groupsize", "7", "--nsamples", "2", "--seqlen", "16",
                             "--calib-file", try smallTextFile("calibration.txt"), "--out", out])
        assertRefused(w, mentioning: ["--w-groupsize", "group size 7", "hidden_size 64"], usage: nil)
        assertNothingWritten(at: out)

        // ResQ / CoQuant quantize weights per output row and take no group size at all.
        let c = try coquant(["quantize", model, "--method", "coquant", "--scheme", "W4A4KV4g32", "--out", out])
        assertRefused(c, mentioning: ["--method coquant", "group size 32", "--scheme W4A4KV4g32"], usage: "quantize")
        assertNothingWritten(at: out)
    }

    /// Option values that make no sense are refused before a model is loaded: a zero or negative group size (a
    /// zero used to crash with a division by zero), clip ratios outside (0, 1] (found only by the first fake-quantized
    /// forward pass, after every layer was solved), a non-finite damping, a too-short --seqlen.
    func testBadOptionValuesAreRefusedBeforeAnyWork() throws {
        let model = try tinyModelWithTokenizer(), out = path("out"), calib = try smallTextFile("calibration.txt")
        let common = ["--nsamples", "2", "--seqlen", "16", "--calib-file", calib, "--out", out]
        for (arguments, words) in [
            (["--method", "rtn", "--scheme", "W4A16g0"], ["group size 0", "positive"]),
            (["--method", "rtn", "--scheme", "W4A16g-1"], ["group size -1", "positive"]),
            (["--method", "rtn", "--w-groupsize", "0"], ["--w-groupsize 0", "-1"]),
            (["--method", "gptq", "--scheme", "W4A4KV4", "--a-clip-ratio=2"], ["--a-clip-ratio 2.0", "(0, 1]"]),
            (["--method", "gptq", "--scheme", "W4A4KV4", "--kv-clip-ratio=0"], ["--kv-clip-ratio 0.0", "(0, 1]"]),
            (["--method", "gptq", "--percdamp", "inf"], ["--percdamp inf", "finite"]),
            (["--method", "rtn", "--embeddings", "int2"], ["--embeddings int2", "int8, int4, f16, f32"]),
            // Subspace options are refused for the methods that have no subspace (they used to be ignored).
            (["--method", "quarot", "--scheme", "W4A4KV4", "--high-fraction", "0.25"], ["--high-fraction", "resq or coquant", "quarot"]),
            (["--method", "gptq", "--granularity", "shared"], ["--granularity", "resq or coquant", "gptq"]),
            (["--method", "rtn", "--kv-weight-aware"], ["--kv-weight-aware", "resq or coquant", "rtn"]),
            (["--method", "gptq", "--key-basis", "per-head"], ["--key-basis", "resq or coquant", "gptq"]),
            (["--method", "resq", "--scheme", "W4A4KV4", "--key-basis", "per-token"], ["--key-basis per-token", "per-head, pooled"]),
            (["--method", "quarot", "--scheme", "W4A4KV4", "--residual-bits", "16"], ["--residual-bits", "resq or coquant", "quarot"]),
            (["--method", "resq", "--scheme", "W4A4KV4", "--granularity", "shared", "--residual-bits", "16"], ["--residual-bits", "per-layer"]),
            (["--method", "coquant", "--scheme", "W4A4KV4", "--residual-bits", "12"], ["--residual-bits 12", "2–8, or 16"]),
            (["--method", "coquant", "--scheme", "W4A16", "--residual-bits", "4"], ["--residual-bits", "W4A16", "full precision"]),
        ] {
            let r = try coquant(["quantize", model] + arguments + common)
            assertRefused(r, mentioning: words, usage: "quantize")
            assertNothingWritten(at: out)
            assertNothingWritten(at: out + ".partial")
        }
        let s = try coquant(["quantize", model, "--method", "rtn", "--nsamples", "2", "--seqlen", "0", "--calib-file", calib, "--out", out])
        assertRefused(s, mentioning: ["--seqlen 0", "at least 2"], usage: "quantize")
        // ResQ/CoQuant statistics need at least as many calibration tokens as the hidden size (64 here).
        let few = try coquant(["quantize", model, "--method", "coquant", "--scheme", "W4A4KV4"] + common)
        assertRefused(few, mentioning: ["--nsamples 2 × --seqlen 16", "hidden size 64"], usage: nil)
        assertNothingWritten(at: out)
        assertNothingWritten(at: out + ".partial")
        // "-1" after --w-groupsize is its value (per channel), not an unknown flag.
        assertSucceeded(try coquant(["quantize", model, "--method", "rtn", "--w-groupsize", "-1"] + common))
    }

    /// A --bases file that cannot be read fails the run before its first layer, and leaves no OUT.partial/ that a
    /// later run would have to be told to resume or overwrite. An --out under a file (absolute or relative) and an
    /// empty --tasks are refused at once.
    func testFailedRunsLeaveNothingAndBadOutputsAreRefused() throws {
        let model = try tinyModelWithTokenizer(), out = path("out"), bases = path("garbage.safetensors")
        try Data(repeating: 0xff, count: 64).write(to: URL(fileURLWithPath: bases))
        let r = try coquant(["quantize", model, "--method", "resq", "--scheme", "W4A4KV4", "--bases", bases, "--nsamples", "2",
                             "--seqlen", "64", "--calib-file", try smallTextFile("calibration.txt"), "--out", out])
        assertRefused(r, mentioning: [bases], usage: nil)
        XCTAssertFalse(r.stderr.contains("..<-"), "no overflowed byte range in the message:\n\(r.stderr)")
        assertNothingWritten(at: out)
        assertNothingWritten(at: out + ".partial")

        let file = path("a-file")
        try "x".write(toFile: file, atomically: true, encoding: .utf8)
        let u = try coquant(["quantize", model, "--method", "rtn", "--out", file + "/sub"])
        assertRefused(u, mentioning: ["--out", file, "is a file"], usage: "quantize")
        let relative = try coquant(["quantize", model, "--method", "rtn", "--out", "a-file/sub"])
        assertRefused(relative, mentioning: ["--out a-file/sub", "is a file"], usage: "quantize")
        let e = try coquant(["eval", model, "--tasks", ",", "--limit", "1", "--out", path("run")])
        assertRefused(e, mentioning: ["--tasks", "piqa"], usage: "eval")
        assertNothingWritten(at: path("run"))
    }

    func testMissingDataFolder() throws {
        let model = try tinyModelWithTokenizer(), missing = path("no-data"), out = path("run")
        let r = try coquant(["eval", model, "--tasks", "piqa", "--limit", "1", "--data", missing, "--out", out])
        assertRefused(r, mentioning: ["--data \(missing)", "piqa/valid.jsonl"], usage: nil)
        assertNothingWritten(at: out)
    }
}
