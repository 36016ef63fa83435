using System.Globalization;

namespace HighlanderPG.Benchmarks;

/// <summary>The benchmark's command line.</summary>
internal sealed class BenchmarkSettings
{
    public const string ConnectionVariable = "HIGHLANDER_BENCH_CONNECTION";

    public const string Usage = """
        Usage: dotnet run -c Release --project bench/HighlanderPG.Benchmarks -- [options]

          --suite NAME          handover (default: the hand-over latency cases), scale (1 and N singletons per node:
                                steady-state cost, N nodes started together, fail-over of the node leading the most),
                                or all (both, one server); messaging (a call to an idle singleton against raw NOTIFY
                                round trips, 10 x --iterations calls; messages per second sustained; not part of all);
                                spread (--scale-nodes x --scale-singletons under the Spread placement and under FirstComer:
                                the spread after start, after the node leading the most is killed, after it comes back,
                                and the hand-overs each change caused; report bench/results/spread-YYYY-MM-DD.md; not part of all)
          --iterations N        measured iterations per hand-over case (default 30)
          --slow-iterations N   iterations of the slow DistributedLock crash case with HandleLostToken watched, run at once (default 5)
          --warmup N            unmeasured iterations before each case (default 1)
          --cap SECONDS         give up waiting for a hand-over after this long and report "> cap" (default 70)
          --connection CS       use this PostgreSQL instead of a throwaway local server
                                (or set HIGHLANDER_BENCH_CONNECTION); the role needs no special rights
          --out PATH            where to write the Markdown report
                                (default bench/results/handover-YYYY-MM-DD.md under the repository root; with
                                --suite scale the scale report, default bench/results/scale-YYYY-MM-DD.md; with --suite all
                                the scale report goes beside it); JSON and SVG are written beside each report
          --cases A,B,...       only these hand-over cases (ids: floor-graceful, floor-crash, dl-graceful, dl-graceful-unwatched,
                                dl-crash, dl-crash-unwatched, hl-graceful, hl-crash, hl-cutoff, cli-floor, cli-graceful, cli-crash)
          --highlander PATH     the `highlander` CLI for the cli-* cases (default: the repository's
                                src/HighlanderPG.Cli/bin/Release/net10.0/highlander; build the solution first)

        Scale suite:
          --scale-nodes N       nodes started together (default 10)
          --scale-singletons N  singletons per node (default 1000)
          --scale-repetitions N SIGKILLs and SIGTERMs of the node leading the most, each (default 3)
          --single-iterations N SIGKILLs and SIGTERMs of a lone singleton's leader, each: the baseline (default 10)
          --spread-runs N       spread suite: runs of each placement (default 1)
          --idle-window SECONDS steady-state measuring window (default 30)
          --settle SECONDS      steady-state settling time before the window (default 8)
          --fault-settle SECONDS pause before each fail-over, plus a random dwell of up to a heartbeat (default 3)
          --seed N              seed of the random dwell before each fault (default: random, printed in the report)
          --verbose             log HighlanderPG's messages (Information and up) to standard error
        """;

    public string Suite { get; private set; } = "handover";

    public bool RunsHandover => Suite is "handover" or "all";

    public bool RunsScale => Suite is "scale" or "all";

    public bool RunsMessaging => Suite is "messaging";

    public bool RunsSpread => Suite is "spread";

    /// <summary>Spread suite: runs of each placement (start, kill, return), alternating.</summary>
    public int SpreadRuns { get; private set; } = 1;

    public int Iterations { get; private set; } = 30;

    public string? Highlander { get; private set; }

    public int ScaleNodes { get; private set; } = 10;

    public int ScaleSingletons { get; private set; } = 1000;

    public int ScaleRepetitions { get; private set; } = 3;

    public int SingleIterations { get; private set; } = 10;

    public TimeSpan IdleWindow { get; private set; } = TimeSpan.FromSeconds(30);

    public TimeSpan Settle { get; private set; } = TimeSpan.FromSeconds(8);

    public TimeSpan FaultSettle { get; private set; } = TimeSpan.FromSeconds(3);

    public int SlowIterations { get; private set; } = 5;

    public int Warmup { get; private set; } = 1;

    public TimeSpan Cap { get; private set; } = TimeSpan.FromSeconds(70);

    public string? Connection { get; private set; } = NullIfEmpty(Environment.GetEnvironmentVariable(ConnectionVariable));

    public string? OutPath { get; private set; }

    public IReadOnlySet<string>? Cases { get; private set; }

    public int Seed { get; private set; } = Random.Shared.Next();

    public bool Verbose { get; private set; }

    /// <summary>The arguments as given, for the report (a connection string is replaced by a placeholder).</summary>
    public string CommandLine { get; private set; } = string.Empty;

    public static BenchmarkSettings Parse(IReadOnlyList<string> args, out string? error)
    {
        var settings = new BenchmarkSettings();
        var shown = new List<string>();
        error = null;
        for (var i = 0; i < args.Count; i++)
        {
            var name = args[i];
            string Value()
            {
                if (i + 1 >= args.Count)
                {
                    throw new FormatException($"{name} needs a value.");
                }

                return args[++i];
            }

            try
            {
                switch (name)
                {
                    case "--suite":
                        var suite = Value();
                        settings.Suite = suite is "handover" or "scale" or "all" or "messaging" or "spread" ? suite : throw new FormatException("--suite must be handover, scale, all, messaging or spread.");
                        shown.Add($"{name} {settings.Suite}");
                        break;
                    case "--highlander":
                        settings.Highlander = Value();
                        shown.Add($"{name} {settings.Highlander}");
                        break;
                    case "--scale-nodes":
                        settings.ScaleNodes = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.ScaleNodes}");
                        break;
                    case "--spread-runs":
                        settings.SpreadRuns = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.SpreadRuns}");
                        break;
                    case "--scale-singletons":
                        settings.ScaleSingletons = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.ScaleSingletons}");
                        break;
                    case "--scale-repetitions":
                        settings.ScaleRepetitions = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.ScaleRepetitions}");
                        break;
                    case "--single-iterations":
                        settings.SingleIterations = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.SingleIterations}");
                        break;
                    case "--idle-window":
                        settings.IdleWindow = TimeSpan.FromSeconds(PositiveInt(name, Value()));
                        shown.Add($"{name} {settings.IdleWindow.TotalSeconds}");
                        break;
                    case "--settle":
                        settings.Settle = TimeSpan.FromSeconds(PositiveInt(name, Value()));
                        shown.Add($"{name} {settings.Settle.TotalSeconds}");
                        break;
                    case "--fault-settle":
                        settings.FaultSettle = TimeSpan.FromSeconds(int.Parse(Value(), NumberStyles.None, CultureInfo.InvariantCulture));
                        shown.Add($"{name} {settings.FaultSettle.TotalSeconds}");
                        break;
                    case "--iterations":
                        settings.Iterations = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.Iterations}");
                        break;
                    case "--slow-iterations":
                        settings.SlowIterations = PositiveInt(name, Value());
                        shown.Add($"{name} {settings.SlowIterations}");
                        break;
                    case "--warmup":
                        settings.Warmup = int.Parse(Value(), NumberStyles.None, CultureInfo.InvariantCulture);
                        shown.Add($"{name} {settings.Warmup}");
                        break;
                    case "--cap":
                        settings.Cap = TimeSpan.FromSeconds(PositiveInt(name, Value()));
                        shown.Add($"{name} {settings.Cap.TotalSeconds}");
                        break;
                    case "--connection":
                        settings.Connection = NullIfEmpty(Value());
                        shown.Add($"{name} <connection string>");
                        break;
                    case "--out":
                        settings.OutPath = Value();
                        shown.Add($"{name} {settings.OutPath}");
                        break;
                    case "--cases":
                        var cases = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet(StringComparer.Ordinal);
                        var unknown = cases.Except(CaseIds).ToList();
                        if (unknown.Count > 0)
                        {
                            throw new FormatException($"Unknown case(s): {string.Join(", ", unknown)}.");
                        }

                        settings.Cases = cases;
                        shown.Add($"{name} {string.Join(',', cases)}");
                        break;
                    case "--seed":
                        settings.Seed = int.Parse(Value(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
                        shown.Add($"{name} {settings.Seed}");
                        break;
                    case "--verbose":
                        settings.Verbose = true;
                        shown.Add(name);
                        break;
                    case "-h" or "--help":
                        error = string.Empty;
                        return settings;
                    default:
                        throw new FormatException($"Unknown option '{name}'.");
                }
            }
            catch (FormatException ex)
            {
                error = ex.Message;
                return settings;
            }
            catch (OverflowException)
            {
                error = $"{name}: the value is out of range.";
                return settings;
            }
        }

        settings.CommandLine = "dotnet run -c Release --project bench/HighlanderPG.Benchmarks" + (shown.Count > 0 ? " -- " + string.Join(' ', shown) : string.Empty);
        return settings;
    }

    public static readonly string[] CaseIds =
    [
        "floor-graceful", "floor-crash",
        "dl-graceful", "dl-graceful-unwatched", "dl-crash", "dl-crash-unwatched",
        "hl-graceful", "hl-crash", "hl-cutoff",
        "cli-floor", "cli-graceful", "cli-crash",
    ];

    public bool Runs(string caseId) => Cases is null || Cases.Contains(caseId);

    private static int PositiveInt(string name, string value)
    {
        var parsed = int.Parse(value, NumberStyles.None, CultureInfo.InvariantCulture);
        return parsed > 0 ? parsed : throw new FormatException($"{name} must be positive.");
    }

    private static string? NullIfEmpty(string? value) => string.IsNullOrWhiteSpace(value) ? null : value;
}
