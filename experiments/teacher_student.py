"""``python -m experiments.teacher_student``: the study :mod:`bnjax.train.studies.teacher_student`."""
from bnjax.train.studies import study

if __name__ == '__main__':
  study.run_study('teacher_student')
