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

    public static Option<string?> Namespace()
    {
        var option = new Option<string?>("--namespace")
        {
            Description = "Namespace the names are hashed in (default: highlander).",
            HelpName = "NS",
        };
        option.Validators.Add(result =>
        {
            if (result.Tokens.Count == 1 && string.IsNullOrWhiteSpace(result.Tokens[0].Value))
            {
                result.AddError("--namespace must not be blank: it is hashed with each name into the lock key (leave it out for the default, highlander).");
            }
        });
        return option;
    }

    /// <summary>An option that takes a whole number, refused in plain words (not as a .NET type name) when it is not one.</summary>
    public static Option<int?> WholeNumber(string name, string description, string example) => new(name)
    {
        Description = description,
        HelpName = "N",
        CustomParser = result =>
        {
            var token = result.Tokens.Count == 1 ? result.Tokens[0].Value : null;
            if (int.TryParse(token, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out var value))
            {
                return value;
            }

            result.AddError($"{name}: '{token}' is not a whole number (e.g. {name} {example}).");
            return null;
        },
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
