import Foundation
import XCTest

// `coquant eval --resume`: a run that stops part-way keeps OUT.partial/, and resuming it ends with the files an
// uninterrupted run writes.
extension CLITests {
    /// The first `rows` docs of piqa and arc_easy in a data folder of the test's own; `longChoiceAt` gives that
    /// arc_easy doc a choice longer than the model's context, so scoring stops there with an error.
    func smallTaskData(_ name: String, rows: Int, longChoiceAt: Int? = nil) throws -> String {
        let folder = path(name)
        for sub in ["piqa", "arc"] {
            try FileManager.default.createDirectory(atPath: folder + "/" + sub, withIntermediateDirectories: true)
        }
        func firstLines(_ file: String) throws -> [String] {
            let text = try String(contentsOfFile: packageRoot + "/data/" + file, encoding: .utf8)
            return Array(text.split(separator: "\n").prefix(rows).map(String.init))
        }
        for file in ["piqa/valid.jsonl", "piqa/valid-labels.lst"] {
            try (try firstLines(file).joined(separator: "\n") + "\n").write(toFile: folder + "/" + file, atomically: true, encoding: .utf8)
        }
        var arc = try firstLines("arc/arc_easy_test.llmfoundry.jsonl")
        if let k = longChoiceAt {
            var row = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(arc[k].utf8)) as? [String: Any])
            row["choices"] = (row["choices"] as! [String]).map { _ in String(repeating: "x ", count: 1100) }
            arc[k] = String(decoding: try JSONSerialization.data(withJSONObject: row, options: [.sortedKeys]), as: UTF8.self)
        }
        try (arc.joined(separator: "\n") + "\n").write(toFile: folder + "/arc/arc_easy_test.llmfoundry.jsonl", atomically: true, encoding: .utf8)
        return folder
    }

    /// results.json without its timings (`seconds` at every level, and `resumed_docs`, which says what they cover),
    /// as sorted-key JSON text.
    func resultsWithoutTimings(_ folder: String) throws -> String {
        func strip(_ value: Any) -> Any {
            if let d = value as? [String: Any] { return d.filter { !["seconds", "resumed_docs"].contains($0.key) }.mapValues(strip) }
            if let a = value as? [Any] { return a.map(strip) }
            return value
        }
        let json = try JSONSerialization.data(withJSONObject: strip(try jsonObject(folder + "/results.json")),
                                              options: [.sortedKeys, .prettyPrinted])
        return String(decoding: json, as: UTF8.self)
    }

    /// results.md without its timings: the wall-time line and the seconds column of the task table.
    func markdownWithoutTimings(_ folder: String) throws -> String {
        let md = try String(contentsOfFile: folder + "/results.md", encoding: .utf8)
        let seconds = try NSRegularExpression(pattern: "(^- wall time: .*$)|(\\| [0-9]+\\.[0-9] \\|$)", options: [.anchorsMatchLines])
        return seconds.stringByReplacingMatches(in: md, range: NSRange(md.startIndex..., in: md), withTemplate: "<time>")
    }

    func lines(_ file: String) throws -> [String] {
        try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    /// An uninterrupted run against one that fails at arc_easy's 4th doc (after piqa has finished), is killed while
    /// writing a line (simulated: half a line appended), and is resumed: same samples (per-doc log-likelihoods),
    /// same metrics, same Markdown apart from timings; the refusals around it name what is wrong.
    func testEvalResumesAnInterruptedRun() throws {
        let model = try tinyModelWithTokenizer()
        let goodData = try smallTaskData("good-data", rows: 6)
        let full = path("full"), run = path("run")
        func eval(_ data: String, _ out: String, _ extra: [String] = []) throws -> CommandResult {
            // One doc per pass, so the failing run below has scored the docs before the bad one (packed batches are
            // covered by the library's resume test).
            try coquant(["eval", model, "--tasks", "piqa,arc_easy", "--limit", "6", "--batch-tokens", "1", "--data", data, "--out", out] + extra)
        }
        assertSucceeded(try eval(goodData, full))
        assertNothingWritten(at: full + ".partial")
        let fullPiqa = try lines(full + "/samples/piqa.jsonl"), fullArc = try lines(full + "/samples/arc_easy.jsonl")
        XCTAssertEqual([fullPiqa.count, fullArc.count], [7, 7], "6 lines and the final newline each")

        // The interrupted run: the error ends it, OUT is not written, the checkpoint holds every doc scored.
        let data = try smallTaskData("data", rows: 6, longChoiceAt: 3)
        assertRefused(try eval(data, run), mentioning: ["does not fit max_length 2048"], usage: nil)
        XCTAssertFalse(FileManager.default.fileExists(atPath: run), "\(run) was written by a failed run")
        let partial = run + ".partial"
        XCTAssertEqual(try lines(partial + "/samples/piqa.jsonl"), fullPiqa, "the finished task's checkpoint is its samples file")
        XCTAssertEqual(try lines(partial + "/samples/arc_easy.jsonl"), Array(fullArc.prefix(3)) + [""], "docs 0–2 of arc_easy")
        let state = try jsonObject(partial + "/state.json")
        XCTAssertEqual(state["tasks"] as? [String], ["piqa", "arc_easy"])
        XCTAssertEqual(state["limit"] as? Int, 6)

        // The data folder is part of the settings, so the run goes on with the bad doc mended in place.
        _ = try smallTaskData("data", rows: 6)
        let other = try coquant(["eval", model, "--tasks", "piqa,arc_easy", "--limit", "6", "--batch-tokens", "1", "--data", goodData, "--out", run, "--resume"])
        assertRefused(other, mentioning: [partial + "/state.json", "--data (task data read from) \(data) then, \(goodData) now"], usage: nil)

        // A kill while the 4th doc's line was being written leaves it cut short; that doc is scored again.
        let cut = Data(fullArc[3].utf8.prefix(fullArc[3].utf8.count / 2))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: partial + "/samples/arc_easy.jsonl"))
        try handle.seekToEnd()
        try handle.write(contentsOf: cut)
        try handle.close()

        // Not silently started over, nor continued with other settings, nor resumed without a checkpoint.
        assertRefused(try eval(data, run), mentioning: [partial, "--resume", "--overwrite"], usage: "eval")
        let shorter = try coquant(["eval", model, "--tasks", "piqa,arc_easy", "--limit", "5", "--batch-tokens", "1", "--data", data, "--out", run, "--resume"])
        assertRefused(shorter, mentioning: [partial + "/state.json", "--limit 6 then, 5 now", "--overwrite"], usage: nil)
        assertRefused(try eval(data, path("never-started"), ["--resume"]),
                      mentioning: [path("never-started") + ".partial", "no checkpoint"], usage: "eval")
        XCTAssertEqual(try lines(partial + "/samples/piqa.jsonl"), fullPiqa, "a refused run changed the checkpoint")

        // A model replaced at the same path (here: only its time stamp moves) is another model.
        let weights = model + "/model.safetensors"
        let stamp = try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: weights)[.modificationDate] as? Date)
        try FileManager.default.setAttributes([.modificationDate: stamp.addingTimeInterval(-3600)], ofItemAtPath: weights)
        assertRefused(try eval(data, run, ["--resume"]), mentioning: [partial + "/state.json", "model files"], usage: nil)
        try FileManager.default.setAttributes([.modificationDate: stamp], ofItemAtPath: weights)

        let resumed = try eval(data, run, ["--resume"])
        assertSucceeded(resumed)
        XCTAssertTrue(resumed.stderr.contains("resuming from \(partial): docs done piqa 6/6, arc_easy 3/6"), resumed.transcript)
        assertNothingWritten(at: partial)
        XCTAssertEqual(try lines(run + "/samples/piqa.jsonl"), fullPiqa)
        XCTAssertEqual(try lines(run + "/samples/arc_easy.jsonl"), fullArc, "per-doc log-likelihoods and outcomes")
        XCTAssertEqual(try resultsWithoutTimings(run), try resultsWithoutTimings(full), "results.json apart from seconds")
        // The timings say which docs they cover: all of the uninterrupted run's, the resumed run's unfinished ones.
        func resumedDocs(_ folder: String) throws -> [Int?] {
            (try jsonObject(folder + "/results.json")["tasks"] as? [[String: Any]] ?? []).map { $0["resumed_docs"] as? Int }
        }
        XCTAssertEqual(try resumedDocs(full), [0, 0])
        XCTAssertEqual(try resumedDocs(run), [6, 3])
        XCTAssertEqual(try markdownWithoutTimings(run), try markdownWithoutTimings(full))
        XCTAssertTrue(try markdownWithoutTimings(run).contains("| arc_easy | acc |"), "the timing filter left the table")
    }
}
