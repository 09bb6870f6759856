"""The report and human evaluation: tables, figures, HTML/Markdown, annotation packets."""
