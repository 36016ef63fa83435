using System.CommandLine;
using System.CommandLine.Parsing;
using HighlanderPG.Cli.Configuration;

namespace HighlanderPG.Cli.Commands;

/// <summary>Option factories shared by the commands.</summary>
internal static class CliOptions
{
    /// <summary>A duration option (<c>500ms</c>, <c>4s</c>, <c>2m</c>, <c>1h</c>, <c>1m30s</c>); a bad value is a parse error naming the option.</summary>
    public static Option<TimeSpan?> Duration(string name, string description) => new(name)
    {
        Description = description,
        HelpName = "DURATION",
        CustomParser = result => ParseDuration(result, name),
    };

    public static Option<string?> Connection() => new("--connection")
    {
        Description = $"PostgreSQL connection string (Npgsql format). Default: ${ConnectionResolver.EnvironmentVariable}, else PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE.",
        HelpName = "CS",
    };

    public static Option<string?> Namespace() => new("--namespace")
    {
        Description = "Namespace the names are hashed in (default: highlander).",
        HelpName = "NS",
    };

    private static TimeSpan? ParseDuration(ArgumentResult result, string name)
    {
        var token = result.Tokens.Count == 1 ? result.Tokens[0].Value : null;
        if (Durations.TryParse(token, out var value, out var error))
        {
            return value;
        }

        result.AddError($"{name}: {error}.");
        return null;
    }
}
