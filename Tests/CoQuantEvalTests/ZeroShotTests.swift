import CoQuantModel
import Foundation
import XCTest
@testable import CoQuantEval

/// The first 30 docs of every task against lm-evaluation-harness 0.4.13 on the same SmolLM2 weights
/// (Tests/Fixtures/zeroshot/README.md): request strings and token ids exact, per-choice log-likelihood within
/// 1e-3, is_greedy, pred, pred_norm, acc and acc_norm per doc identical, and the 30-doc metrics equal.
final class ZeroShotFixtureTests: XCTestCase {
    nonisolated(unsafe) static var loaded: LoadedModel?

    func scorer() throws -> LoglikelihoodScorer {
        let path = modelsDir + "/SmolLM2-135M-Instruct.Q4_1.gguf"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("\(path) missing: run scripts/download-models.sh smollm2") }
        if Self.loaded == nil { Self.loaded = try ModelLoader.load(path, requireTokenizer: true) }
        return LoglikelihoodScorer(model: Self.loaded!.model, tokenizer: Self.loaded!.tokenizer!)
    }

    func checkTask(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath:
            packageRoot + "/Tests/Fixtures/zeroshot/\(name).json"))) as! [String: Any]
        let items = fixture["items"] as! [[String: Any]]
        let task = try ZeroShotTask.named(name)
        let docs = try task.docs(dataDir: packageRoot + "/data", limit: items.count)
        XCTAssertEqual(docs.count, items.count, file: file, line: line)
        let scorer = try scorer()
        var samples: [DocResult] = []
        var worst = 0.0
        for (doc, item) in zip(docs, items) {
            let requests = item["requests"] as! [[String: Any]]
            let what = "\(name) doc \(doc.id)"
            XCTAssertEqual(doc.requests.count, requests.count, what, file: file, line: line)
            for (r, ref) in zip(doc.requests, requests) {
                XCTAssertEqual(r.context, ref["context"] as? String, "\(what): context", file: file, line: line)
                XCTAssertEqual(r.continuation, ref["continuation"] as? String, "\(what): continuation", file: file, line: line)
                let (c, k) = scorer.encodePair(r)
                XCTAssertEqual(c, ref["context_token_ids"] as? [Int], "\(what): context tokens", file: file, line: line)
                XCTAssertEqual(k, ref["continuation_token_ids"] as? [Int], "\(what): continuation tokens", file: file, line: line)
            }
            let results = try scorer.score(doc.requests)
            XCTAssertEqual(results.count, requests.count, "\(what): results", file: file, line: line)
            for (j, (res, ref)) in zip(results, requests).enumerated() {
                let ll = ref["loglikelihood"] as! Double
                worst = max(worst, abs(res.loglikelihood - ll))
                XCTAssertEqual(res.loglikelihood, ll, accuracy: 1e-3, "\(what) choice \(j): loglikelihood", file: file, line: line)
                XCTAssertEqual(res.isGreedy, ref["is_greedy"] as? Bool, "\(what) choice \(j): is_greedy", file: file, line: line)
                XCTAssertFalse(res.truncated, file: file, line: line)
            }
            let sample = DocResult(doc: doc, task: task, results: results)
            samples.append(sample)
            XCTAssertEqual(sample.acc, item["acc"] as? Double, "\(what): acc", file: file, line: line)
            if task.outputType == .multipleChoice {
                XCTAssertEqual(sample.gold, item["gold"] as? Int, "\(what): gold", file: file, line: line)
                XCTAssertEqual(sample.pred, item["pred"] as? Int, "\(what): pred", file: file, line: line)
                XCTAssertEqual(doc.choices.map { Double($0.unicodeScalars.count) }, item["acc_norm_char_lengths"] as? [Double],
                               "\(what): acc_norm lengths", file: file, line: line)
            }
            if task.reportsAccNorm {
                XCTAssertEqual(sample.predNorm, item["pred_norm"] as? Int, "\(what): pred_norm", file: file, line: line)
                XCTAssertEqual(sample.accNorm, item["acc_norm"] as? Double, "\(what): acc_norm", file: file, line: line)
            }
        }
        print("\(name): max |Δ loglikelihood| vs lm-eval \(worst)")
        let result = TaskResult(task: task, samples: samples, seconds: 0)
        let metrics = fixture["metrics_lm_eval"] as! [String: Any]
        XCTAssertEqual(result.acc.value, metrics["acc"] as! Double, accuracy: 1e-12, file: file, line: line)
        XCTAssertEqual(result.acc.stderr!, metrics["acc_stderr"] as! Double, accuracy: 1e-12, file: file, line: line)
        if let accNorm = result.accNorm {
            XCTAssertEqual(accNorm.value, metrics["acc_norm"] as! Double, accuracy: 1e-12, file: file, line: line)
            XCTAssertEqual(accNorm.stderr!, metrics["acc_norm_stderr"] as! Double, accuracy: 1e-12, file: file, line: line)
        } else {
            XCTAssertNil(metrics["acc_norm"], file: file, line: line)
        }
        if let want = metrics["perplexity"] as? Double {
            // exp(−mean ll): a 1e-3 error per item moves it by at most 0.1 %. Its stderr is not compared: lm-eval
            // bootstraps it (random resamples), ours is the delta-method ppl · stderr(mean ll).
            let ppl = try XCTUnwrap(result.perplexity, "\(name): the fixture has a perplexity", file: file, line: line)
            XCTAssertEqual(ppl.value, want, accuracy: 1e-3 * ppl.value, file: file, line: line)
        } else {
            XCTAssertNil(result.perplexity, file: file, line: line)
        }
    }

    /// Σ log p of `continuation` after `context` from one plain forward pass of (context + continuation)[:-1].
    func directLoglikelihood(_ scorer: LoglikelihoodScorer, _ context: [Int], _ continuation: [Int]) -> Double {
        let input = Array((context + continuation).dropLast()), V = scorer.model.config.vocabSize
        let logits = scorer.model.forward(input)
        return logits.withUnsafeBufferPointer { p in
            continuation.enumerated().map { j, token in
                let row = p.baseAddress! + (context.count - 1 + j) * V
                return Double(row[token]) - float32LogSumExp(row, V)
            }.reduce(0, +)
        }
    }

    /// The packed shared-prefix path gives what separate full passes give, for a doc whose choices share a
    /// context (arc) and one whose contexts differ (winogrande).
    func testSharedPrefixEqualsSeparatePasses() throws {
        let scorer = try scorer()
        for name in ["arc_easy", "winogrande"] {
            let doc = try ZeroShotTask.named(name).docs(dataDir: packageRoot + "/data", limit: 1)[0]
            let shared = try scorer.score(doc.requests)
            XCTAssertEqual(shared.count, doc.requests.count, name)
            for (r, s) in zip(doc.requests, shared) {
                let (c, k) = scorer.encodePair(r)
                XCTAssertEqual(s.loglikelihood, directLoglikelihood(scorer, c, k), accuracy: 1e-4, name)
            }
        }
    }

    /// Items longer than max_length + 1 tokens lose tokens on the left (lm-eval's rule) and are counted.
    func testLeftTruncation() throws {
        let full = try scorer()
        let scorer = LoglikelihoodScorer(model: full.model, tokenizer: full.tokenizer, maxLength: 24)
        let task = try ZeroShotTask.named("boolq")
        let doc = try task.docs(dataDir: packageRoot + "/data", limit: 1)[0]
        let results = try scorer.score(doc.requests)
        XCTAssertEqual(results.map(\.truncated), [true, true])
        for (r, s) in zip(doc.requests, results) {
            let (c, k) = scorer.encodePair(r)
            let kept = Array((c + k).suffix(25))
            XCTAssertEqual(s.loglikelihood, directLoglikelihood(scorer, Array(kept.dropLast(k.count)), k), accuracy: 1e-4)
        }
        let result = TaskResult(task: task, samples: [DocResult(doc: doc, task: task, results: results)], seconds: 0)
        XCTAssertEqual(result.truncatedRequests, 2)
    }

    func testPIQA() throws { try checkTask("piqa") }
    func testARCEasy() throws { try checkTask("arc_easy") }
    func testARCChallenge() throws { try checkTask("arc_challenge") }
    func testHellaSwag() throws { try checkTask("hellaswag") }
    func testWinoGrande() throws { try checkTask("winogrande") }
    func testBoolQ() throws { try checkTask("boolq") }
    func testLAMBADA() throws { try checkTask("lambada_openai") }
    func testSocialIQA() throws { try checkTask("social_iqa") }
    func testOpenBookQA() throws { try checkTask("openbookqa") }
}

/// Task definitions, request encoding and metrics without a model.
final class ZeroShotRulesTests: XCTestCase {
    func testPythonStringRules() {
        XCTAssertEqual(pythonCapitalize("he IS"), "He is")
        XCTAssertEqual(pythonCapitalize(""), "")
        XCTAssertEqual(hellaswagPreprocess(" A [title] b [step] c   d "), "A. b c  d")
        XCTAssertEqual(splitHellaswagContext("A man is on a roof. he").0, "A man is on a roof.")
        XCTAssertEqual(splitHellaswagContext("A man is on a roof. he").1, "he")
        XCTAssertEqual(splitHellaswagContext("Done.").1, "")
        XCTAssertEqual(splitHellaswagContext("no sentence end").0, "")
        XCTAssertEqual(splitHellaswagContext("no sentence end").1, "no sentence end")
    }

    func testStderrIsSampleStdOverRootN() {
        // piqa's 30-doc fixture: 22 of 30 right → acc 0.7333 ± 0.0821 (lm-eval's mean_stderr).
        let m = MetricValue(mean: Array(repeating: 1.0, count: 22) + Array(repeating: 0.0, count: 8))
        XCTAssertEqual(m.value, 22.0 / 30, accuracy: 1e-15)
        XCTAssertEqual(m.stderr!, 0.08211756827352533, accuracy: 1e-12)
        XCTAssertNil(MetricValue(mean: [1]).stderr)
    }

    func testUnknownTaskListsValidOnes() {
        XCTAssertThrowsError(try ZeroShotTask.named("piqaa")) { e in
            let s = "\(e)"
            for t in ZeroShotTask.all { XCTAssertTrue(s.contains(t.name), s) }
        }
    }

    func testBadDataNamesFileAndLine() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("coquant-bad-data-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir + "/arc", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/arc/arc_easy_test.llmfoundry.jsonl"
        let good = #"{"query": "Question: Why?", "choices": ["a", "b"], "gold": 1}"#
        try (good + "\n" + #"{"query": "Question: Why?", "choices": ["a", "b"]"# + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ZeroShotTask.named("arc_easy").docs(dataDir: dir)) { e in
            XCTAssertTrue("\(e)".hasPrefix(file + ":2: malformed JSON"), "\(e)")
        }
        try (good + "\n" + #"{"query": "Question: Why?", "choices": ["a", "b"], "gold": 2}"# + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ZeroShotTask.named("arc_easy").docs(dataDir: dir)) { e in
            XCTAssertEqual("\(e)", file + ":2: gold 2 is not an index into 2 choices")
        }
        XCTAssertEqual(try ZeroShotTask.named("arc_easy").docs(dataDir: dir, limit: 1).count, 1)   // --limit reads no further
        XCTAssertThrowsError(try ZeroShotTask.named("piqa").docs(dataDir: dir)) { e in
            XCTAssertEqual("\(e)", dir + "/piqa/valid.jsonl: no such file")
        }
    }

    func testEveryTaskReadsItsWholeFile() throws {
        // Row counts of data/SOURCES.md; also proves every row of every file parses.
        let expected = ["piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "hellaswag": 10042, "winogrande": 1267,
                        "boolq": 3270, "lambada_openai": 5153, "social_iqa": 1954, "openbookqa": 500]
        for task in ZeroShotTask.all {
            XCTAssertEqual(try task.docs(dataDir: packageRoot + "/data").count, expected[task.name], task.name)
        }
    }
}
