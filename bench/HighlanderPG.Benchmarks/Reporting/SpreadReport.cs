using System.Globalization;
using System.Text;
using System.Text.Json;
using HighlanderPG.Benchmarks.Cases;
using HighlanderPG.Benchmarks.Measurement;

namespace HighlanderPG.Benchmarks.Reporting;

/// <summary>The spread suite's report: Markdown and JSON (every phase, every node's count).</summary>
internal sealed class SpreadReport(BenchmarkSettings settings, EnvironmentInfo environment, DateTimeOffset started, DateTimeOffset finished, SpreadResults results)
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    /// <summary>bench/results/spread-YYYY-MM-DD.md, or <c>--out</c> when given.</summary>
    public string MarkdownPath() =>
        settings.OutPath is not null
            ? Path.GetFullPath(settings.OutPath)
            : Path.Combine(environment.RepositoryRoot ?? Environment.CurrentDirectory, "bench", "results", $"spread-{started.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}.md");

    public async Task<string> WriteAsync()
    {
        var markdown = MarkdownPath();
        Directory.CreateDirectory(Path.GetDirectoryName(markdown)!);
        await File.WriteAllTextAsync(Path.ChangeExtension(markdown, ".json"), JsonSerializer.Serialize(new { environment.Commit, started, finished, settings.CommandLine, results }, Json));
        await File.WriteAllTextAsync(markdown, Render(Path.GetFileName(Path.ChangeExtension(markdown, ".json"))));
        return markdown;
    }

    public string RenderSummary()
    {
        var text = new StringBuilder();
        foreach (var run in results.Runs)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"{run.Placement} #{run.Run}:");
            foreach (var p in run.Phases)
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"  {Row(p)}");
            }
        }

        return text.ToString();
    }

    private static string Row(SpreadPhase p)
    {
        var text = string.Create(CultureInfo.InvariantCulture, $"{p.Phase}: {Ms(p.Ms)}; {p.Total} running; min {p.Min}, max {p.Max}, stddev {p.StdDev:0.0}; {p.HandOvers} hand-over(s)");
        if (p.TakeOverP50Ms is { } p50)
        {
            text += string.Create(CultureInfo.InvariantCulture, $"; take-over p50 {Ms(p50)}, max {Ms(p.TakeOverMaxMs)}{(p.Missing > 0 ? $", {p.Missing} not within the cap" : "")}");
        }

        return p.ReturnedLeads is { } r ? text + string.Create(CultureInfo.InvariantCulture, $"; the returned node leads {r}") : text;
    }

    private static string Ms(double? ms) => ms switch
    {
        null => "–",
        0 => "nothing moved",
        { } m => Format.Milliseconds(m),
    };

    public string Render(string jsonName)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"# Spread placement: {settings.ScaleNodes} nodes x {settings.ScaleSingletons} singletons ({started:yyyy-MM-dd})");
        text.AppendLine();
        text.AppendLine("Issue 11, \"Spread\": under `FirstComer` the first node to connect takes every singleton; under `Spread` each live node");
        text.AppendLine("leads at most its share (docs/lease-protocol.md, \"Placement\"). Each run starts the nodes together (separate");
        text.AppendLine("`node --kind scale` processes, default options but the placement), SIGKILLs the node leading the most, then starts");
        text.AppendLine("it again under the same node id. After each change the spread is counted once no child has started or stopped");
        text.AppendLine(CultureInfo.InvariantCulture, $"anywhere for {SpreadCases.Quiet.TotalSeconds:0} s (the settle time, 10 s, plus two heartbeats). Hand-overs: children that returned on");
        text.AppendLine("nodes the benchmark did not stop. Times are from the change to the last start or stop of the phase (for \"all");
        text.AppendLine("running\": to the moment every singleton had started somewhere), on the nodes' own monotonic clocks.");
        text.AppendLine();
        foreach (var run in results.Runs)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"## {run.Placement} #{run.Run}");
            text.AppendLine();
            text.AppendLine("| phase | time | running | min | max | stddev | hand-overs | take-over p50 / max |");
            text.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var p in run.Phases)
            {
                var takeOver = p.TakeOverP50Ms is { } p50 ? $"{Ms(p50)} / {Ms(p.TakeOverMaxMs)}{(p.Missing > 0 ? $" ({p.Missing} not within the cap)" : "")}" : "";
                text.AppendLine(CultureInfo.InvariantCulture, $"| {p.Phase}{(p.ReturnedLeads is { } r ? $" (it leads {r})" : "")} | {Ms(p.Ms)} | {p.Total} | {p.Min} | {p.Max} | {p.StdDev:0.0} | {p.HandOvers} | {takeOver} |");
            }

            text.AppendLine();
            foreach (var p in run.Phases)
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"- {p.Phase}: {string.Join(", ", p.PerNode.Select(n => $"{n.NodeId}={n.Running}"))}");
            }

            text.AppendLine(CultureInfo.InvariantCulture, $"- pg_locks with the cluster settled: {run.LockRows} rows; a scan's round trip (p50 of 20) {Ms(run.LockScanMs)}");
            text.AppendLine();
        }

        foreach (var (title, lines) in new[] { ("Errors", results.Errors), ("Notes", results.Notes) })
        {
            if (lines.Count > 0)
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"## {title}");
                text.AppendLine();
                lines.ForEach(l => text.AppendLine(CultureInfo.InvariantCulture, $"- {l}"));
                text.AppendLine();
            }
        }

        text.AppendLine("## Environment");
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Command:** `{settings.CommandLine}`; commit {environment.Commit}; {started:u} to {finished:u}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Machine:** {environment.Machine}; {environment.Runtime}; {Environment.ProcessorCount} cores, shared with other work");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **PostgreSQL:** {environment.ServerVersion}; {environment.ServerDescription}");
        foreach (var uptime in results.Uptime)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"- **uptime:** `{uptime}`");
        }

        text.AppendLine(CultureInfo.InvariantCulture, $"- Every phase, with every node's count: [{jsonName}]({jsonName})");
        return text.ToString();
    }
}
