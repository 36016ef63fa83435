using System.Globalization;

namespace HighlanderPG.FaultRun;

/// <summary>The command line of the coordinator.</summary>
internal sealed class Settings
{
    public int Seed { get; set; } = 1;
    public int Nodes { get; set; } = 5;
    public int Singletons { get; set; } = 50;
    public int CliHosts { get; set; } = 2;
    public int CliSingletons { get; set; } = 3;
    public int? Faults { get; set; }
    public TimeSpan? Duration { get; set; }
    public string? Connection { get; set; }
    public string? ReportDirectory { get; set; }
    public bool Smoke { get; set; }
    public bool NoClock { get; set; }

    /// <summary>Only these fault kinds (<c>--kinds stop,kill,...</c>, the enum's names, case-insensitive); null: all.</summary>
    public HashSet<FaultKind>? Kinds { get; set; }

    /// <summary>Where the wall clock cannot be stepped for real: fake it with libfaketime on one host.</summary>
    public bool FakeTimeClock { get; set; }
    public TimeSpan Lease { get; set; } = TimeSpan.FromSeconds(3);

    public static Settings Parse(string[] args)
    {
        var s = new Settings();
        var seedGiven = false;
        bool nodes = false, singletons = false, cliHosts = false, cliSingletons = false;
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--seed": s.Seed = int.Parse(Next(), CultureInfo.InvariantCulture); seedGiven = true; break;
                case "--nodes": s.Nodes = int.Parse(Next(), CultureInfo.InvariantCulture); nodes = true; break;
                case "--singletons": s.Singletons = int.Parse(Next(), CultureInfo.InvariantCulture); singletons = true; break;
                case "--cli-hosts": s.CliHosts = int.Parse(Next(), CultureInfo.InvariantCulture); cliHosts = true; break;
                case "--cli-singletons": s.CliSingletons = int.Parse(Next(), CultureInfo.InvariantCulture); cliSingletons = true; break;
                case "--faults": s.Faults = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--duration": s.Duration = ParseDuration(Next()); break;
                case "--connection": s.Connection = Next(); break;
                case "--report": s.ReportDirectory = Next(); break;
                case "--lease": s.Lease = ParseDuration(Next()); break;
                case "--kinds": s.Kinds = ParseKinds(Next()); break;
                case "--smoke": s.Smoke = true; break;
                case "--no-clock-jumps": s.NoClock = true; break;
                case "--clock-jumps": s.NoClock = false; break;
                case "--faketime-clock-jumps": s.NoClock = false; s.FakeTimeClock = true; break;
                default: throw new ArgumentException($"unknown argument {args[i]}");
            }
        }

        if (!seedGiven)
        {
            s.Seed = Random.Shared.Next(1, 1_000_000);
        }

        if (s.Smoke)
        {
            // Few processes: two library hosts and one CLI host; every fault kind once, then a few mixed rounds.
            if (!nodes) { s.Nodes = 3; }
            if (!singletons) { s.Singletons = 10; }
            if (!cliHosts) { s.CliHosts = 1; }
            if (!cliSingletons) { s.CliSingletons = 2; }
        }

        if (s.Faults is null && s.Duration is null)
        {
            s.Faults = s.Smoke ? 14 : 100;
        }

        if (s.Nodes - s.CliHosts < 2)
        {
            throw new ArgumentException("at least two library hosts are needed (--nodes minus --cli-hosts)");
        }

        s.CliSingletons = Math.Min(s.CliSingletons, s.Singletons);
        return s;
    }

    private static HashSet<FaultKind> ParseKinds(string text)
    {
        var kinds = new HashSet<FaultKind>();
        foreach (var name in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            kinds.Add(Enum.TryParse<FaultKind>(name, ignoreCase: true, out var kind)
                ? kind
                : throw new ArgumentException($"unknown fault kind '{name}' in --kinds; known: {string.Join(", ", Enum.GetNames<FaultKind>())}"));
        }

        return kinds;
    }

    public static TimeSpan ParseDuration(string text)
    {
        static double N(string t) => double.Parse(t, CultureInfo.InvariantCulture);
        return text switch
        {
            _ when text.EndsWith("ms", StringComparison.Ordinal) => TimeSpan.FromMilliseconds(N(text[..^2])),
            _ when text.EndsWith('s') => TimeSpan.FromSeconds(N(text[..^1])),
            _ when text.EndsWith('m') => TimeSpan.FromMinutes(N(text[..^1])),
            _ when text.EndsWith('h') => TimeSpan.FromHours(N(text[..^1])),
            _ => TimeSpan.FromSeconds(N(text)),
        };
    }
}
