"""spinecast.training"""
