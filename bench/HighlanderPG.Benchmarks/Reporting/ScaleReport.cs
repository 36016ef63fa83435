using System.Globalization;
using System.Text;
using System.Text.Json;
using HighlanderPG.Benchmarks.Measurement;

namespace HighlanderPG.Benchmarks.Reporting;

/// <summary>The scale suite's report: Markdown, JSON (every sample) and an SVG chart of the take-over distributions.</summary>
internal sealed class ScaleReport(BenchmarkSettings settings, EnvironmentInfo environment, DateTimeOffset started, DateTimeOffset finished, ScaleResults results)
{
    private const double IdleStatementsLimit = 10;
    private const double LastFactor = 2.0;

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    /// <summary>bench/results/scale-YYYY-MM-DD.md, or beside <c>--out</c> when given.</summary>
    public string MarkdownPath()
    {
        var name = $"scale-{started.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture)}.md";
        if (settings.OutPath is not null)
        {
            var out_ = Path.GetFullPath(settings.OutPath);
            return settings.Suite == "scale" ? out_ : Path.Combine(Path.GetDirectoryName(out_)!, name);
        }

        return Path.Combine(environment.RepositoryRoot ?? Environment.CurrentDirectory, "bench", "results", name);
    }

    public async Task<string> WriteAsync()
    {
        var markdown = MarkdownPath();
        var svg = Path.ChangeExtension(markdown, ".svg");
        var json = Path.ChangeExtension(markdown, ".json");
        Directory.CreateDirectory(Path.GetDirectoryName(markdown)!);
        await File.WriteAllTextAsync(svg, RenderChart());
        await File.WriteAllTextAsync(json, RenderJson());
        await File.WriteAllTextAsync(markdown, Render(Path.GetFileName(svg), Path.GetFileName(json)));
        return markdown;
    }

    public string RenderChart()
    {
        List<SvgChart.Series> series = [];
        foreach (var fault in new[] { "kill", "term" })
        {
            var single = results.SingleFailovers.Where(f => f.Fault == fault).ToList();
            if (single.Count > 0)
            {
                series.Add(new($"1 singleton, {Signal(fault)} of its leader", [.. single.SelectMany(f => f.TakeOverMs)], single.Sum(f => f.Missing)));
            }

            foreach (var f in results.Failovers.Where(f => f.Fault == fault))
            {
                series.Add(new($"{Signal(fault)} #{f.Repetition}: {f.Victim} ran {f.Led} (1 of {f.Leaders} leaders)", f.TakeOverMs, f.Missing));
            }
        }

        return SvgChart.Render(
            $"Time until each singleton of the stopped node runs elsewhere ({settings.ScaleNodes} nodes x {settings.ScaleSingletons} singletons; {started:yyyy-MM-dd}, commit {environment.Commit})",
            series);
    }

    public string RenderJson() => JsonSerializer.Serialize(new
    {
        date = started,
        finished,
        command = settings.CommandLine,
        machine = environment.Machine,
        runtime = environment.Runtime,
        server = environment.ServerVersion,
        serverDescription = environment.ServerDescription,
        libraries = environment.Libraries,
        settings = new
        {
            settings.ScaleNodes,
            settings.ScaleSingletons,
            settings.ScaleRepetitions,
            settings.SingleIterations,
            idleWindowSeconds = settings.IdleWindow.TotalSeconds,
            settleSeconds = settings.Settle.TotalSeconds,
            faultSettleSeconds = settings.FaultSettle.TotalSeconds,
            capSeconds = settings.Cap.TotalSeconds,
            settings.Seed,
        },
        steady = results.Steady,
        startTogether = results.StartTogether,
        failovers = results.Failovers.Select(Describe),
        singleFailovers = results.SingleFailovers.Select(Describe),
        verdicts = Verdicts().Select(v => new { target = v.Target, measured = v.Measured, verdict = v.Verdict }),
        errors = results.Errors,
        notes = results.Notes,
    }, Json);

    private static object Describe(Failover f) => new
    {
        f.Fault, f.Repetition, f.Victim, f.Led, f.Leaders, f.Missing, f.VictimExitMs, f.VictimLastStopMs,
        firstMs = f.First, p50Ms = f.P50, lastMs = f.Last, takeOverMs = f.TakeOverMs,
    };

    public string RenderSummary()
    {
        var text = new StringBuilder();
        if (results.Steady.Count > 0)
        {
            text.AppendLine("| singletons | node | running | sessions (lock + wait) | statements/s (lock + wait) | ERROR lines/s | node CPU | its backends' CPU | node RSS |");
            text.AppendLine("|--:|---|--:|--:|--:|--:|--:|--:|--:|");
            foreach (var s in results.Steady)
            {
                text.Append(CultureInfo.InvariantCulture,
                    $"| {s.Singletons} | {s.Role} | {s.Running} | {s.Sessions} ({s.LockSessions} + {s.WaitSessions}) | {Rate(s.StatementsPerSecond)} ({Rate(s.LockStatementsPerSecond)} + {Rate(s.WaitStatementsPerSecond)}) | {Rate(s.ErrorsPerSecond)} | " +
                    $"{s.NodeCpuPercent:0.00} % | {Percent(s.BackendCpuPercent)} | {(s.RssMiB is { } r ? r.ToString("0", CultureInfo.InvariantCulture) + " MiB" : "–")} |").AppendLine();
            }

            text.AppendLine();
        }

        if (results.StartTogether is { } st)
        {
            text.AppendLine("| started together | nodes ready (first, all) | singletons running (first, all) | server CPU until all ran | nodes' CPU | singletons per node |");
            text.AppendLine("|---|--:|--:|--:|--:|---|");
            text.Append(CultureInfo.InvariantCulture,
                $"| {st.Nodes} nodes x {st.Singletons} | {Format.Milliseconds(st.FirstReadyMs)}, {Format.Milliseconds(st.AllReadyMs)} | {Format.Milliseconds(st.FirstRunningMs)}, {Format.Milliseconds(st.AllRunningMs)} | {ServerCpu(st)} | {st.NodesCpuMs / 1000:0.0} s | {string.Join(", ", st.Spread.Select(n => n.Running.ToString(CultureInfo.InvariantCulture)))} |").AppendLine();
            text.AppendLine();
        }

        if (results.Failovers.Count + results.SingleFailovers.Count > 0)
        {
            text.AppendLine("| stopped node | fault | runs | singletons it ran | time until all run elsewhere: p50 of runs' p50 | p50 of runs' last | worst last | vs 1 singleton (p50) |");
            text.AppendLine("|---|---|--:|--:|--:|--:|--:|--:|");
            foreach (var fault in new[] { "kill", "term" })
            {
                var single = results.SingleFailovers.Where(f => f.Fault == fault).ToList();
                var singleP50 = single.Count == 0 ? (double?)null : Summary.Of(single.SelectMany(f => f.TakeOverMs)).P50?.Milliseconds;
                if (single.Count > 0)
                {
                    text.Append(CultureInfo.InvariantCulture, $"| leader of 1 singleton (2 nodes) | {Signal(fault)} | {single.Count} | 1 | {Ms(singleP50)} | {Ms(Median(single.Select(f => f.Last)))} | {Ms(single.Max(f => f.Last))}{Missing(single)} | 1.0x |").AppendLine();
                }

                var many = results.Failovers.Where(f => f.Fault == fault).ToList();
                if (many.Count > 0)
                {
                    var worst = many.Max(f => f.Last);
                    text.Append(CultureInfo.InvariantCulture,
                        $"| leading the most ({settings.ScaleNodes} nodes) | {Signal(fault)} | {many.Count} | {string.Join(", ", many.Select(f => f.Led))} | {Ms(Median(many.Select(f => f.P50)))} | {Ms(Median(many.Select(f => f.Last)))} | {Ms(worst)}{Missing(many)} | {(worst is { } w && singleP50 is { } sp && sp > 0 ? Format.Ratio(w / sp) : "–")} |").AppendLine();
                }
            }

            text.AppendLine();
        }

        text.AppendLine("| target | measured | verdict |");
        text.AppendLine("|---|---|---|");
        foreach (var (target, measured, verdict) in Verdicts())
        {
            text.Append(CultureInfo.InvariantCulture, $"| {target} | {measured} | {verdict} |").AppendLine();
        }

        return text.ToString();
    }

    public string Render(string chartFile, string jsonFile)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"# HighlanderPG at scale: {settings.ScaleSingletons} singletons per node ({started:yyyy-MM-dd})");
        text.AppendLine();
        text.AppendLine("Steady-state cost per node with 1 and with many singletons, nodes started together, and fail-over of the node leading the most.");
        text.AppendLine(CultureInfo.InvariantCulture, $"Produced by `bench/HighlanderPG.Benchmarks --suite scale` (see `bench/README.md`); every sample is in [{jsonFile}]({jsonFile}).");
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Date:** {started:yyyy-MM-dd HH:mm} UTC (the run took {(finished - started).TotalMinutes:0.0} min)");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Command:** `{settings.CommandLine}`");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Machine:** {environment.Machine}; {environment.Runtime}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **PostgreSQL:** {environment.ServerVersion}; {environment.ServerDescription}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Server settings:** {string.Join(", ", environment.ServerSettings.Select(s => $"`{s.Name}` = {s.Value}"))}");
        text.AppendLine(CultureInfo.InvariantCulture, $"- **Libraries:** {environment.Libraries}");
        text.AppendLine(CultureInfo.InvariantCulture,
            $"- **Machine load:** 1-minute load average {Load(environment.LoadAverageAtStart)} at the start, {Load(environment.LoadAverageAtEnd)} at the end, on {Environment.ProcessorCount} cores");
        text.AppendLine(CultureInfo.InvariantCulture,
            $"- **Settings:** {settings.ScaleNodes} nodes x {settings.ScaleSingletons} singletons; {settings.ScaleRepetitions} SIGKILL + {settings.ScaleRepetitions} SIGTERM of the node leading the most; baseline {settings.SingleIterations} + {settings.SingleIterations} with 1 singleton; idle window {settings.IdleWindow.TotalSeconds:0} s after {settings.Settle.TotalSeconds:0} s; cap {settings.Cap.TotalSeconds:0} s; dwell seed {settings.Seed}; HighlanderPG default options everywhere");
        text.AppendLine();
        text.AppendLine("## Results");
        text.AppendLine();
        text.Append(RenderSummary());
        text.AppendLine();
        text.AppendLine(CultureInfo.InvariantCulture, $"![Per-singleton take-over times]({chartFile})");
        text.AppendLine();

        if (results.Failovers.Count + results.SingleFailovers.Count > 0)
        {
            text.AppendLine("## Every fail-over");
            text.AppendLine();
            text.AppendLine("Times from just before the signal to each singleton's child starting on another node (nearest-rank percentiles over its singletons); " +
                "for SIGTERM, when the victim's last child returned (the node's own timestamp); when the benchmark saw the victim's process exit.");
            text.AppendLine();
            text.AppendLine("| nodes x singletons | fault | # | victim | it ran | leading nodes | first | p50 | p90 | last | not within the cap | victim's last child returned | victim exited |");
            text.AppendLine("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            foreach (var (label, list) in new[] { ("2 x 1", results.SingleFailovers), ($"{settings.ScaleNodes} x {settings.ScaleSingletons}", results.Failovers) })
            {
                foreach (var f in list)
                {
                    var p90 = f.TakeOverMs.Count == 0 ? null : (double?)Summary.Of(f.TakeOverMs).P90!.Value.Milliseconds;
                    text.Append(CultureInfo.InvariantCulture,
                        $"| {label} | {Signal(f.Fault)} | {f.Repetition} | {f.Victim} | {f.Led} | {f.Leaders} | {Ms(f.First)} | {Ms(f.P50)} | {Ms(p90)} | {Ms(f.Last)} | {f.Missing} | {Ms(f.VictimLastStopMs)} | {Ms(f.VictimExitMs)} |").AppendLine();
                }
            }

            text.AppendLine();
        }

        if (results.Steady.Any(s => s.Statements.Count > 0))
        {
            text.AppendLine("## What the idle sessions ran");
            text.AppendLine();
            text.AppendLine("Statements in the idle window per node and session, from the server's log (text cut at 120 characters).");
            text.AppendLine();
            foreach (var s in results.Steady.Where(s => s.Statements.Count > 0))
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"- {s.Singletons} singleton(s), {s.Role} ({s.NodeId}), {s.WindowSeconds:0} s:");
                foreach (var (statement, count) in s.Statements)
                {
                    text.AppendLine(CultureInfo.InvariantCulture, $"  - {count} x {statement.Replace("|", "\\|", StringComparison.Ordinal)}");
                }
            }

            text.AppendLine();
        }

        if (results.StartTogether is { } st)
        {
            text.AppendLine("## Started together");
            text.AppendLine();
            text.AppendLine(CultureInfo.InvariantCulture,
                $"{st.Nodes} node processes started at once, each registering the same {st.Singletons} singletons. The first had started its host {Format.Milliseconds(st.FirstReadyMs)} after the first spawn, all after {Format.Milliseconds(st.AllReadyMs)}; " +
                $"the first singleton ran after {Format.Milliseconds(st.FirstRunningMs)}, every one of them after {Format.Milliseconds(st.AllRunningMs)}. In that time the server's processes used {ServerCpu(st)} and the node processes {st.NodesCpuMs / 1000:0.0} s of CPU (start-up of .NET included).");
            text.AppendLine();
            text.AppendLine("| node | singletons running 2 s later |");
            text.AppendLine("|---|--:|");
            foreach (var n in st.Spread)
            {
                text.Append(CultureInfo.InvariantCulture, $"| {n.NodeId} | {n.Running} |").AppendLine();
            }

            text.AppendLine();
        }

        if (results.Notes.Count + results.Errors.Count > 0)
        {
            text.AppendLine("## Notes");
            text.AppendLine();
            foreach (var note in results.Notes)
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"- {note}");
            }

            foreach (var error in results.Errors)
            {
                text.AppendLine(CultureInfo.InvariantCulture, $"- **Failed:** {error}");
            }

            text.AppendLine();
        }

        text.AppendLine("## Method");
        text.AppendLine();
        text.AppendLine(Method);
        return text.ToString();
    }

    private IEnumerable<(string Target, string Measured, string Verdict)> Verdicts()
    {
        var few = results.Steady.Where(s => s.Singletons == 1).ToList();
        var many = results.Steady.Where(s => s.Singletons > 1).ToList();
        if (few.Count > 0 && many.Count > 0)
        {
            var grows = many.Any(m => few.FirstOrDefault(f => f.Role == m.Role) is { } f && m.Sessions > f.Sessions);
            yield return ("sessions per node do not grow with the singletons",
                string.Join("; ", results.Steady.Select(s => string.Create(CultureInfo.InvariantCulture, $"{s.Singletons} {s.Role}: {s.Sessions}"))),
                grows ? "**FAIL**" : "**PASS**");
        }

        if (results.Steady.Count > 0)
        {
            var measured = results.Steady.Where(s => s.StatementsPerSecond is not null).ToList();
            if (measured.Count > 0)
            {
                var worst = measured.Max(s => s.StatementsPerSecond!.Value);
                yield return ($"idle statements per second single-digit (< {IdleStatementsLimit:0}) on every node, whatever the singletons",
                    string.Create(CultureInfo.InvariantCulture, $"worst {worst:0.00}/s"),
                    worst < IdleStatementsLimit ? "**PASS**" : "**FAIL**");
                var errors = measured.Max(s => s.ErrorsPerSecond ?? 0);
                yield return ("an idle cluster makes the server log nothing at ERROR",
                    string.Create(CultureInfo.InvariantCulture, $"worst {errors:0.00} ERROR lines/s per node"),
                    errors == 0 ? "**PASS**" : "**FAIL**");
            }
            else
            {
                yield return ("idle statements per second single-digit", "not measured (needs the throwaway server's log)", "–");
            }
        }

        foreach (var fault in new[] { "kill", "term" })
        {
            var single = results.SingleFailovers.Where(f => f.Fault == fault).SelectMany(f => f.TakeOverMs).ToList();
            var runs = results.Failovers.Where(f => f.Fault == fault).ToList();
            if (single.Count == 0 || runs.Count == 0)
            {
                continue;
            }

            var limit = LastFactor * Summary.Of(single).P50!.Value.Milliseconds;
            var within = runs.Count(f => f.Missing == 0 && f.Last <= limit);
            yield return ($"{Signal(fault)} of the node leading the most: the last of its singletons within {LastFactor:0}x the single-singleton p50",
                $"limit {Format.Milliseconds(limit)}; lasts {string.Join(", ", runs.Select(f => f.Missing > 0 ? "> cap" : Ms(f.Last)))}; {within} of {runs.Count} within",
                within == runs.Count ? "**PASS**" : "**MISS**");
        }
    }

    private static string Signal(string fault) => fault == "kill" ? "SIGKILL" : "SIGTERM";

    private static string Missing(IEnumerable<Failover> list) => list.Sum(f => f.Missing) is var m and > 0 ? $" ({m} not within the cap)" : "";

    private static double? Median(IEnumerable<double?> values)
    {
        var list = values.OfType<double>().ToList();
        return list.Count == 0 ? null : Summary.Of(list).P50!.Value.Milliseconds;
    }

    private static string Ms(double? milliseconds) => milliseconds is { } m ? Format.Milliseconds(m) : "–";

    private static string Rate(double? rate) => rate is { } r ? r.ToString("0.00", CultureInfo.InvariantCulture) : "n/a";

    private static string Percent(double? percent) => percent is { } p ? p.ToString("0.00", CultureInfo.InvariantCulture) + " %" : "n/a";

    private static string ServerCpu(StartTogether st) => st.ServerCpuMs is { } ms
        ? string.Create(CultureInfo.InvariantCulture, $"{ms / 1000:0.0} s ({ms / st.AllRunningMs:0.00} cores)")
        : "n/a";

    private static string Load(double? load) => load is { } l ? l.ToString("0.0", CultureInfo.InvariantCulture) : "unknown";

    private const string Method = """
        - **Nodes** are separate processes: this executable relaunched with the hidden verb `node --kind scale --count N`, a
          HighlanderPG host with default options registering the singletons `s0000`, `s0001`, ... Each child writes
          `START name timestamp` when entered and `STOP name timestamp` when it returns, with `Stopwatch.GetTimestamp()`
          (CLOCK_MONOTONIC on Linux: one clock for every process of the machine). Take-over times are these timestamps minus
          the benchmark's own, taken just before the signal: no database polling is in the measurement.
        - **Steady state**: a node leading N singletons, then a node following the same N (its wait session seen in
          `pg_stat_activity`), settled, then idle for the window. *Sessions*: rows of `pg_stat_activity` whose
          `application_name` is `highlander/<node>` (lock session) or `highlander-wait/<node>` (wait session), the most seen
          in the window (sampled every second). *Statements*: counted in the server's own log: for the window
          `log_statement = all` is set (`ALTER SYSTEM` + `pg_reload_conf()`), the benchmark logs a marker statement at each end,
          and every `statement:` / `execute` line between them is counted for its session's `application_name`
          (`log_line_prefix` carries it): one line is one simple query or one Execute message of the extended protocol (one per
          statement, batched or not). *ERROR lines* are counted the same way. *CPU*: user + system time from `/proc/PID/stat`
          of the node process and of its backends (their pids from `pg_stat_activity`), over the window, in percent of one
          core. *RSS*: `VmRSS` of the node process at the end. Only the throwaway server's log can be read: with
          `--connection`, statements and errors are "n/a".
        - **Started together**: N processes spawned in a loop; "all nodes ready" is the last READY line (host started);
          "all singletons running" the last first-start. Server CPU: the postmaster's `/proc` times with its reaped
          children plus every live child's, before and after.
        - **Fail-over**: once every singleton runs and every node that runs none has its wait session, after a pause and a
          random dwell of up to a heartbeat, the live node running the most singletons gets SIGKILL or SIGTERM (graceful:
          its host stops every child, then releases the locks); measured until every singleton it ran has started on
          another node (capped). A fresh node then replaces it, so the cluster keeps its size and the next victim is the
          node leading the most then. SIGKILL and SIGTERM alternate. The baseline is the same with 2 nodes and 1 singleton.
        - **Everything shares the machine's cores**: the server, every node, and the benchmark.
        """;
}
