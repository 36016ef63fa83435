using System.CommandLine;
using System.CommandLine.Parsing;
using HighlanderPG.Cli.Configuration;

namespace HighlanderPG.Cli.Commands;

/// <summary>Option factories shared by the commands.</summary>
internal static class CliOptions
{
    /// <summary>
    /// The longest duration an option takes unless it says otherwise: every one ends up in a timer or a wait, and .NET's
    /// timers wait at most 49.7 days (a longer one would fail later, after the command had acted).
    /// </summary>
    public static readonly TimeSpan MaxDuration = TimeSpan.FromDays(49);

    /// <summary>
    /// A duration option (<c>500ms</c>, <c>4s</c>, <c>2m</c>, <c>1h</c>, <c>1m30s</c>), at most <paramref name="max"/>
    /// (default <see cref="MaxDuration"/>); a bad value is a parse error naming the option.
    /// </summary>
    /// <param name="name">The option's name.</param>
    /// <param name="description">Its help text.</param>
    /// <param name="max">The longest value it takes.</param>
    /// <param name="notPositive">When set, zero is refused with this message.</param>
    public static Option<TimeSpan?> Duration(string name, string description, TimeSpan? max = null, string? notPositive = null) => new(name)
    {
        Description = description,
        HelpName = "DURATION",
        CustomParser = result => ParseDuration(result, name, max ?? MaxDuration, notPositive),
    };

    public static Option<string?> Connection()
    {
        var option = new Option<string?>("--connection")
        {
            Description = $"PostgreSQL connection string (Npgsql format). Default: ${ConnectionResolver.EnvironmentVariable}, else PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE.",
            HelpName = "CS",
        };
        option.Validators.Add(result =>
        {
            // Given but blank (an unset variable in a script: --connection "$DB"): never a quiet fall-back to another database.
            if (result.Tokens.Count == 1 && string.IsNullOrWhiteSpace(result.Tokens[0].Value))
            {
                result.AddError($"--connection must not be blank: give the connection string, or leave --connection out to use ${ConnectionResolver.EnvironmentVariable} or the PG* variables.");
            }
        });
        return option;
    }

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

    private static TimeSpan? ParseDuration(ArgumentResult result, string name, TimeSpan max, string? notPositive)
    {
        var token = result.Tokens.Count == 1 ? result.Tokens[0].Value : null;
        if (Durations.TryParse(token, out var value, out var error))
        {
            if (value > max)
            {
                result.AddError($"{name}: '{token}' is too long: at most {Durations.Format(max)}.");
                return null;
            }

            if (notPositive is not null && value <= TimeSpan.Zero)
            {
                result.AddError(notPositive);
                return null;
            }

            return value;
        }

        result.AddError($"{name}: {error}.");
        return null;
    }
}
