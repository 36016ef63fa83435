using System.Globalization;
using Spectre.Console;

namespace HighlanderPG.Cli.Demo;

/// <summary>The demo's last words: a table of what happened after each fault, the notes, and the verdict.</summary>
internal static class DemoSummary
{
    public static void Print(int exitCode, IReadOnlyList<FaultResult> results, DemoFindings findings, TimeSpan elapsed, string workDir)
    {
        if (Console.IsOutputRedirected && AnsiConsole.Profile.Width < 200)
        {
            AnsiConsole.Profile.Width = 200; // a log or CI output: wide enough that the table does not wrap (it is only as wide as its cells)
        }

        var table = new Table().Border(TableBorder.Rounded).Title("What happened after each fault");
        foreach (var column in new[] { "#", "fault", "leader → new leader", "old child", "new child ran after", "old stopped first", "verdict" })
        {
            table.AddColumn(column);
        }

        for (var i = 0; i < results.Count; i++)
        {
            var r = results[i];
            table.AddRow(
                (i + 1).ToString(CultureInfo.InvariantCulture),
                Markup.Escape(r.Fault),
                Markup.Escape($"{r.LeaderBefore ?? "?"} → {r.LeaderAfter ?? "none"}"),
                Markup.Escape(r.OldChild),
                r.NewChildAfter is { } after ? DemoText.Ms(after) : "[red]never[/]",
                r.OldStoppedFirst ? "yes" : r.Ok ? "[yellow]no[/]" : "[red]NO[/]",
                !r.Ok ? $"[red]{Markup.Escape(r.Verdict)}[/]" : r.OldStoppedFirst ? $"[green]{Markup.Escape(r.Verdict)}[/]" : $"[yellow]{Markup.Escape(r.Verdict)}[/]");
        }

        AnsiConsole.Write(table);
        foreach (var note in findings.Notes)
        {
            AnsiConsole.MarkupLine($"[grey]note: {Markup.Escape(note)}[/]");
        }

        if (exitCode == ExitCodes.Ok)
        {
            var known = results.Where(r => r.Ok && !r.OldStoppedFirst).ToList();
            AnsiConsole.MarkupLine(known.Count == 0
                ? $"[green bold]Invariants held:[/] never two children at once (a kernel flock witnessed every start), and every fault was recovered from ({results.Count} faults in {DemoView.Format(elapsed)})."
                : $"[green bold]Invariants held[/] for every fault the lease covers: no two children at once there (a kernel flock witnessed every start), and every fault was recovered from ({results.Count} faults in {DemoView.Format(elapsed)}). "
                  + $"[yellow]{Markup.Escape(string.Join("; ", known.Select(r => r.Fault)))}: the old and new child overlapped{(known[0].KnownOverlap is { } length ? " for " + DemoText.Ms(length) : "")}, which only fencing prevents (see the note).[/]");
        }
        else if (exitCode == ExitCodes.Interrupted)
        {
            AnsiConsole.MarkupLine("[yellow]Interrupted; everything the demo started was stopped.[/]");
        }
        else
        {
            foreach (var violation in findings.Violations)
            {
                AnsiConsole.MarkupLine($"[red bold]FAILED:[/] {Markup.Escape(violation)}");
            }

            if (workDir.Length > 0 && Directory.Exists(workDir))
            {
                AnsiConsole.MarkupLine($"[grey]Node logs and the child journal are kept in {Markup.Escape(workDir)}[/]");
            }
        }
    }
}
