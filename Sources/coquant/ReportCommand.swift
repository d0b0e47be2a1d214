import ArgumentParser
import CoQuantEval
import CoQuantModel
import Foundation

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put several `coquant eval` runs side by side: the table papers print, and SVG charts.",
        discussion: """
        Each RUN is an `eval --out` folder or its results.json. The table has one row per run: method, W-A-KV bits,
        WikiText-2 perplexity, KL divergence and same-top-1 rate when measured, every task's headline metric ×100
        (acc_norm where the task reports it, else acc) and their average over the run's tasks. With --out, also
        report.md, average.svg (bar chart of the averages) and layer_loss.svg (Σ quantization loss per decoder layer,
        for runs of quantized folders whose report.json was found).

        Example:
          coquant report runs/fp runs/rtn-w4 runs/gptq-w4 --out runs/compare
        """)

    @Argument(help: "Eval output folders or results.json files.")
    var runs: [String]

    @Option(name: [.customLong("out"), .customShort("o")], help: "Write report.md and the SVG charts into this folder.")
    var out: String?

    @Flag(help: "Replace --out if it exists.")
    var overwrite = false

    func validate() throws {
        if runs.isEmpty { throw ValidationError("give at least one run") }
        if let out, FileManager.default.fileExists(atPath: out), !overwrite {
            throw ValidationError("\(out) already exists (pass --overwrite to replace it)")
        }
    }

    func run() throws {
        let loaded = try runs.map { path -> (String, EvalRun) in
            let file = path.hasSuffix(".json") ? path : path + "/results.json"
            guard let data = FileManager.default.contents(atPath: file) else { throw RunError("\(file): no such file (is \(path) an eval --out folder?)") }
            do { return (runName(path), try JSONDecoder().decode(EvalRun.self, from: data)) } catch {
                throw RunError("\(file): not a coquant eval results.json (\(error))")
            }
        }
        let table = comparisonTable(loaded)
        print(table, terminator: "")
        guard let out else { return }
        try writeFolderAtomically(out, overwrite: overwrite) { dir in
            var md = "# CoQuant comparison\n\n" + table + "\n"
            md += "Tasks ×100: acc_norm where the task reports it, else acc. Avg. is over each run's own tasks.\n"
            let averages = loaded.compactMap { name, run in run.average.map { (name, 100 * $0) } }
            if !averages.isEmpty {
                try barChart(averages, title: "Zero-shot average (acc_norm else acc, ×100)").write(toFile: dir + "/average.svg", atomically: false, encoding: .utf8)
                md += "\n![average](average.svg)\n"
            }
            let losses = loaded.compactMap { name, run in run.layerLoss.map { (name, $0) } }
            if !losses.isEmpty {
                try lineChart(losses, title: "Σ quantization loss per decoder layer").write(toFile: dir + "/layer_loss.svg", atomically: false, encoding: .utf8)
                md += "\n![layer loss](layer_loss.svg)\n"
            }
            try md.write(toFile: dir + "/report.md", atomically: false, encoding: .utf8)
        }
        printErr("wrote \(out)/report.md and charts")
    }
}

/// A run's label: its folder name (or the results.json's folder).
func runName(_ path: String) -> String {
    let url = URL(fileURLWithPath: path).standardizedFileURL
    return (path.hasSuffix(".json") ? url.deletingLastPathComponent() : url).lastPathComponent
}

func comparisonTable(_ runs: [(String, EvalRun)]) -> String {
    var taskNames: [String] = []
    for (_, r) in runs { for t in r.tasks where !taskNames.contains(t.task) { taskNames.append(t.task) } }
    let hasKL = runs.contains { $0.1.kl != nil }
    var header = ["run", "method", "W-A-KV", "Wiki PPL"] + (hasKL ? ["KL", "same top-1"] : []) + taskNames + ["Avg."]
    var rows: [[String]] = []
    for (name, r) in runs {
        var row = [name, r.method + (r.scheme.map { " " + $0 } ?? ""), r.bits,
                   r.wikitext2.map { String(format: "%.2f", $0.perplexity) } ?? (r.kl.map { String(format: "%.2f", $0.perplexity) } ?? "—")]
        if hasKL {
            row += [r.kl.map { String(format: "%.4f", $0.meanKL) } ?? "—", r.kl.map { String(format: "%.1f %%", 100 * $0.sameTop1) } ?? "—"]
        }
        for t in taskNames {
            row.append(r.tasks.first { $0.task == t }.map { String(format: "%.1f", 100 * $0.headline.value) } ?? "—")
        }
        row.append(r.average.map { String(format: "%.1f", 100 * $0) } ?? "—")
        rows.append(row)
    }
    if runs.contains(where: { $0.1.limit != nil }) {
        header[0] = "run (limit)"
        for (i, (_, r)) in runs.enumerated() { rows[i][0] += r.limit.map { " (\($0))" } ?? "" }
    }
    var md = "| " + header.joined(separator: " | ") + " |\n|" + header.indices.map { $0 < 3 ? "---|" : "---:|" }.joined() + "\n"
    for row in rows { md += "| " + row.joined(separator: " | ") + " |\n" }
    return md
}

// MARK: - SVG charts (hand-written: a bar chart and a line chart are all a report needs)

let chartColors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]

func xmlEscape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
}

/// Horizontal bars, one per run, labelled with the value.
func barChart(_ bars: [(String, Double)], title: String) -> String {
    let rowHeight = 28.0, left = 220.0, width = 420.0, top = 40.0
    let height = top + rowHeight * Double(bars.count) + 20
    let maxValue = max(bars.map(\.1).max() ?? 1, 1e-9)
    var svg = String(format: "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"13\">\n", left + width + 80, height)
    svg += "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">\(xmlEscape(title))</text>\n"
    for (i, (name, v)) in bars.enumerated() {
        let y = top + rowHeight * Double(i), w = width * max(v, 0) / maxValue
        svg += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%@</text>\n", left - 8, y + 17, xmlEscape(name))
        svg += String(format: "<rect x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%@\"/>\n", left, y + 4, w, rowHeight - 8, chartColors[i % chartColors.count])
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\">%.1f</text>\n", left + w + 6, y + 17, v)
    }
    return svg + "</svg>\n"
}

/// One polyline per run over the layer index; a log10 axis when the values span more than two decades.
func lineChart(_ series: [(String, [Double])], title: String) -> String {
    let left = 70.0, top = 40.0, width = 560.0, plotHeight = 300.0, legend = 20.0 * Double(series.count)
    let all = series.flatMap(\.1).filter { $0 > 0 }
    let lo = all.min() ?? 1, hi = all.max() ?? 1
    let logScale = hi / lo > 100
    func scaled(_ v: Double) -> Double { logScale ? log10(max(v, lo)) : v }
    let yMin = logScale ? scaled(lo) : 0, yMax = max(scaled(hi), yMin + 1e-12)
    let layers = max(series.map(\.1.count).max() ?? 1, 2)
    func x(_ i: Int) -> Double { left + width * Double(i) / Double(layers - 1) }
    func y(_ v: Double) -> Double { top + plotHeight * (1 - (scaled(v) - yMin) / (yMax - yMin)) }
    var svg = String(format: "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", left + width + 30, top + plotHeight + 50 + legend)
    svg += "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">\(xmlEscape(title))\(logScale ? " (log scale)" : "")</text>\n"
    svg += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, top + plotHeight, left + width, top + plotHeight)
    svg += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", left, top, left, top + plotHeight)
    for tick in 0...4 {
        let s = yMin + (yMax - yMin) * Double(tick) / 4, v = logScale ? pow(10, s) : s
        let ty = top + plotHeight * (1 - Double(tick) / 4)
        svg += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", left - 6, ty + 4, v)
    }
    for i in stride(from: 0, to: layers, by: max(1, layers / 10)) {
        svg += String(format: "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n", x(i), top + plotHeight + 16, i)
    }
    svg += String(format: "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">layer</text>\n", left + width / 2, top + plotHeight + 32)
    for (k, (name, values)) in series.enumerated() {
        let color = chartColors[k % chartColors.count]
        let points = values.enumerated().map { String(format: "%.1f,%.1f", x($0), y($1)) }.joined(separator: " ")
        svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points)\"/>\n"
        let ly = top + plotHeight + 50 + 20 * Double(k)
        svg += String(format: "<rect x=\"%.0f\" y=\"%.0f\" width=\"14\" height=\"4\" fill=\"%@\"/><text x=\"%.0f\" y=\"%.0f\">%@</text>\n", left, ly - 6, color, left + 20, ly, xmlEscape(name))
    }
    return svg + "</svg>\n"
}
